"""A shipped model's ONNX files back to torch weights, so a new run can start from the model users have.

`xraysr export` keeps every parameter's torch name as its ONNX initializer name, except GroupNorm's scale and
shift: torch exports GroupNorm as InstanceNormalization followed by a Mul and an Add whose constants get
anonymous names (``onnx::Mul_135``). Those are recovered by walking the graph in order, since the exporter
emits the norms in the order the modules run. `import_engines` checks the result by running the rebuilt
torch modules against the ONNX files on the same input, so a wrong mapping fails here, not after hours of
training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from xraysr.service.manifest import load_manifest
from xraysr.training.config import CxrVAEConfig, UNetConfig
from xraysr.training.unet_lite import UNetLite, build_unet
from xraysr.training.vae import CxrVAE, build_cxr_vae

logger = logging.getLogger(__name__)

# The largest difference between the ONNX and rebuilt torch outputs that still counts as the same weights.
IMPORT_TOLERANCE = 1e-4


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant by name, including the Identity aliases the exporter makes of equal constants (an
    untrained model's GroupNorms all have scale 1 and shift 0, and share one initializer)."""
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _group_norm_affines(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scale, shift) of each GroupNorm, in graph order: the constants of the Mul and Add after each
    InstanceNormalization (through the Reshape back to N×C×H×W)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def next_node(node: onnx.NodeProto, op_type: str) -> onnx.NodeProto:
        for _ in range(3):  # past the Reshape that undoes the grouping
            (node,) = consumers[node.output[0]]
            if node.op_type == op_type:
                return node
        raise ValueError(f"no {op_type} after the InstanceNormalization of {node.name}")

    def constant(node: onnx.NodeProto) -> np.ndarray:
        names = [name for name in node.input if name in values]
        if len(names) != 1:
            raise ValueError(f"{node.op_type} {node.name} has no single constant operand")
        return values[names[0]].reshape(-1)

    affines = []
    for node in model.graph.node:
        if node.op_type == "InstanceNormalization":
            multiply = next_node(node, "Mul")
            affines.append((constant(multiply), constant(next_node(multiply, "Add"))))
    return affines


def _fill(module: nn.Module, named: dict[str, np.ndarray], norms: list[tuple[np.ndarray, np.ndarray]], prefix: str):
    """A state dict for ``module``: parameters by name from ``named`` (with ``prefix``), GroupNorms in order."""
    state = {}
    group_norms = [name for name, child in module.named_modules() if isinstance(child, nn.GroupNorm)]
    if len(group_norms) != len(norms):
        raise ValueError(f"the graph has {len(norms)} GroupNorms, the module {len(group_norms)}")
    affine = dict(zip(group_norms, norms, strict=True))
    for name, tensor in module.state_dict().items():
        owner, _, kind = name.rpartition(".")
        if owner in affine:
            value = affine[owner][0 if kind == "weight" else 1]
        elif f"{prefix}{name}" in named:
            value = named[f"{prefix}{name}"]
        else:
            raise ValueError(f"{prefix}{name} is not in the ONNX file")
        if tuple(value.shape) != tuple(tensor.shape):
            raise ValueError(f"{name}: ONNX shape {value.shape}, torch shape {tuple(tensor.shape)}")
        state[name] = torch.from_numpy(np.array(value, dtype=np.float32))
    return state


def vae_from_onnx(encoder_path: Path, decoder_path: Path, config: CxrVAEConfig) -> CxrVAE:
    vae = build_cxr_vae(config)
    state = {}
    for path, part in ((encoder_path, vae.encoder), (decoder_path, vae.decoder)):
        model = onnx.load(str(path))
        values = _initializers(model)
        name = "encoder" if part is vae.encoder else "decoder"
        part_state = _fill(part, values, _group_norm_affines(model, values), f"vae.{name}.")
        state.update({f"{name}.{key}": value for key, value in part_state.items()})
    vae.load_state_dict(state)
    return vae.eval()


def unet_from_onnx(unet_path: Path, config: UNetConfig, latent_channels: int) -> UNetLite:
    unet = build_unet(config, latent_channels)
    model = onnx.load(str(unet_path))
    values = _initializers(model)
    unet.load_state_dict(_fill(unet, values, _group_norm_affines(model, values), ""))
    return unet.eval()


def _largest_difference(onnx_path: Path, feeds: dict[str, np.ndarray], torch_output: torch.Tensor) -> float:
    from xraysr.service.runtimes.onnxruntime import create_session

    session = create_session(onnx_path)
    (onnx_output,) = session.run(None, feeds)
    return float(np.abs(onnx_output - torch_output.numpy()).max())


def architecture(files: dict[str, Path]) -> tuple[CxrVAEConfig, UNetConfig]:
    """The VAE's and UNet-lite's sizes, read from the shapes of their ONNX weights."""
    encoder = _initializers(onnx.load(str(files["encoder"])))
    decoder = _initializers(onnx.load(str(files["decoder"])))
    unet = _initializers(onnx.load(str(files["unet"])))

    def count(values: dict[str, np.ndarray], prefix: str) -> int:
        return len({name[len(prefix) :].split(".")[0] for name in values if name.startswith(prefix)})

    hidden = int(encoder["vae.encoder.1.weight"].shape[0])
    vae = CxrVAEConfig(
        latent_channels=int(decoder["vae.decoder.0.weight"].shape[1]),
        hidden_channels=hidden,
        num_res_blocks=len([n for n in encoder if n.startswith("vae.encoder.") and n.endswith(".conv1.weight")]),
    )
    base = int(unet["stem.weight"].shape[0])
    levels = count(unet, "down_blocks.")
    widths = [int(unet[f"down_blocks.{level}.0.conv1.weight"].shape[0]) for level in range(levels)]
    unet_config = UNetConfig(
        base_channels=base,
        channel_multipliers=tuple(width // base for width in widths),
        num_res_blocks=count(unet, "down_blocks.0."),
        time_embed_dim=int(unet["time_mlp.0.weight"].shape[0]),
    )
    return vae, unet_config


@torch.no_grad()
def import_engines(model_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """engines/<model> (FP32 files) → ``out_dir/vae.pt`` (a train-vae checkpoint) and ``out_dir/sr_init.pt`` (the
    UNet's weights and target scale, for an SR config's ``init_from``), each checked against its ONNX file. The
    architecture is read from the files; a config that trains on from them must name the same sizes."""
    from xraysr.training.export import _Encoder

    manifest = load_manifest(model_dir)
    files = {name: Path(model_dir) / component.path for name, component in manifest.components.items()}
    vae_config, unet_config = architecture(files)
    vae = vae_from_onnx(files["encoder"], files["decoder"], vae_config)
    unet = unet_from_onnx(files["unet"], unet_config, vae.latent_channels)

    # The rebuilt modules must give the ONNX files' answers on a real-looking input.
    generator = torch.Generator().manual_seed(0)
    lr_image = torch.rand(2, 1, manifest.image.lr_size, manifest.image.lr_size, generator=generator) * 2 - 1
    from xraysr.training.diffusion import ConditionEncoder

    encoder = _Encoder(ConditionEncoder(vae, manifest.image.hr_size // manifest.image.lr_size), manifest.image.lr_size)
    lr_latent = encoder(lr_image)
    noisy = torch.randn(lr_latent.shape, generator=generator)
    timestep = torch.tensor([999.0, 400.0])
    errors = {
        "encoder": _largest_difference(files["encoder"], {"lr_image": lr_image.numpy()}, lr_latent),
        "decoder": _largest_difference(
            files["decoder"], {"hr_latent": lr_latent.numpy()}, vae.decode(lr_latent).clamp(-1, 1)
        ),
        "unet": _largest_difference(
            files["unet"],
            {"noisy_latent": noisy.numpy(), "timestep": timestep.numpy(), "lr_latent": lr_latent.numpy()},
            unet(noisy, timestep, lr_latent),
        ),
    }
    logger.info("rebuilt torch modules against the ONNX files, largest difference: %s", errors)
    wrong = {name: error for name, error in errors.items() if not error <= IMPORT_TOLERANCE}
    if wrong:
        raise ValueError(f"the rebuilt weights do not reproduce {model_dir}: largest differences {wrong}")

    out_dir.mkdir(parents=True, exist_ok=True)
    vae_path, sr_path = out_dir / "vae.pt", out_dir / "sr_init.pt"
    torch.save({"ema": vae.state_dict()}, vae_path)
    torch.save(
        {
            "ema": unet.state_dict(),
            "target_scale": manifest.latent.target_scale,
            "source": manifest.version,
            "vae": vae_config.model_dump(mode="json", exclude={"checkpoint"}),
            "unet": unet_config.model_dump(mode="json"),
        },
        sr_path,
    )
    return vae_path, sr_path
