"""Many images at once: an archive of arrays through the Python API's batch call, on one machine or on Ray.

arrays.py        .npz/.npy read a slice of rows at a time, written member by member (memory: a shard)
shards.py        a shard through ``Upscaler.upscale_batch``; per-image seeds (``image_seed``)
parts.py         OUT.parts/: each finished shard, and the plan ``--resume`` checks
pool.py          the shards in this process or in ``--workers N`` processes
ray_adapter.py   the shards on Ray Data (``--ray``), the optional extra ``xraysr[ray]``
run.py           the run: plan, execute, assemble ``OUT`` in one rename
"""
