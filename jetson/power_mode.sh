#!/usr/bin/env bash
# Set the Jetson's power mode (nvpmodel), then pin its clocks at that mode's maximum (jetson_clocks).
#
#   sudo jetson/power_mode.sh MODE [--no-clocks]
#   jetson/power_mode.sh --list
#
# MODE is a mode's NAME or ID from this board's /etc/nvpmodel.conf. IDs differ between boards and JetPack
# releases, names are what the documentation uses, so a name is looked up and an ID is taken as given:
#
#   board                     JetPack   ID  NAME         budget   notes
#   Orin Nano 8 GB            6.0, 6.1  0   15W          15 W     all 6 cores; the default
#                                       1   7W           7 W      4 cores; the setting for a fanless box
#   Orin Nano 8 GB            6.2       0   15W, 1 25W, 2 MAXN_SUPER (uncapped), and 7W (the "Super" modes)
#   Orin Nano 4 GB            6.x       a 10W top mode before 6.2, Super modes on 6.2: check --list
#   Jetson Nano 4 GB          4.6       0   MAXN         10 W     4 cores, GPU 921 MHz; the default
#                                       1   5W           5 W      2 cores, GPU 640 MHz; for a USB supply
#
# jetson_clocks then holds CPU, GPU and memory clocks at the mode's maximum instead of scaling with load:
# steadier latency (what docs/BENCHMARKS.md measures) for more idle power. --no-clocks skips it; a reboot
# undoes it. Both tools need root. NVPMODEL_CONF overrides the configuration's path (the tests use it).
set -euo pipefail

conf="${NVPMODEL_CONF:-/etc/nvpmodel.conf}"
fail() { echo "power_mode.sh: error: $*" >&2; exit 1; }

# "ID NAME" per mode, from lines such as "< POWER_MODEL ID=1 NAME=7W >".
modes() {
    [[ -r "${conf}" ]] || fail "${conf} not found: this is not a Jetson (or set NVPMODEL_CONF)"
    sed -n 's/^< *POWER_MODEL  *ID=\([0-9][0-9]*\)  *NAME=\([^ >]*\).*/\1 \2/p' "${conf}"
}

mode=""
clocks=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --list) echo "ID NAME (from ${conf})"; modes; exit 0 ;;
        --no-clocks) clocks=0; shift ;;
        -h | --help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) fail "unknown option $1" ;;
        *) [[ -z "${mode}" ]] || fail "one MODE only, got ${mode} and $1"; mode="$1"; shift ;;
    esac
done
[[ -n "${mode}" ]] || fail "give a MODE (a name or ID; --list shows this board's)"
((EUID == 0)) || fail "nvpmodel and jetson_clocks need root: sudo $0 ${mode}"

available="$(modes)"
if [[ "${mode}" =~ ^[0-9]+$ ]]; then
    match="$(awk -v id="${mode}" '$1 == id' <<<"${available}")"
else
    match="$(awk -v name="${mode}" 'toupper($2) == toupper(name)' <<<"${available}")"
fi
id="" name=""
read -r id name <<<"${match}" || true
[[ -n "${id}" && -n "${name}" ]] || fail "no mode ${mode} in ${conf}; this board has:$(echo; echo "${available}")"

# stdin from /dev/null: where a switch needs a reboot, nvpmodel asks, and the answer must be "not now".
nvpmodel -m "${id}" </dev/null
echo "power_mode.sh: nvpmodel -m ${id} (${name})"
if ((clocks)); then
    jetson_clocks
    echo "power_mode.sh: jetson_clocks: clocks held at the ${name} maximum until reboot"
fi
nvpmodel -q </dev/null
