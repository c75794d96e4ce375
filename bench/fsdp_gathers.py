"""All-gathers under FSDP2, counted on CPU: a training step, and greedy decoding as train.py's
validation runs it (with and without train.gathered_for_decoding).

    python bench/fsdp_gathers.py

One process over gloo, a 3+3-layer model wrapped as accelerate wraps it (each layer a unit,
reshard_after_forward=True, encode/decode registered as forward methods, the root not
resharded after forward, as train.py sets it). The count hooks FSDP's private
FSDPParamGroup.unshard, so it may need updating with torch.
"""

import argparse
import collections
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.distributed.fsdp._fully_shard._fsdp_param_group as param_group
from accelerate.utils import DistributedType
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from data import SpecialIds  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402
from translate import greedy  # noqa: E402

gathers = collections.Counter()
_unshard = param_group.FSDPParamGroup.unshard


def counted_unshard(self, async_op=False):
    if self._all_gather_result is None and not self.is_unsharded:
        gathers[self._module_fqn or "root"] += 1
    return _unshard(self, async_op)


def main():
    param_group.FSDPParamGroup.unshard = counted_unshard
    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    torch.manual_seed(0)
    cfg = ModelConfig(50, 50, pad_id=0, d_model=32, n_heads=2, d_ff=64, n_layers=3)
    model = Transformer(cfg)
    for layer in [*model.encoder.layers, *model.decoder.layers]:
        fully_shard(layer, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=True)
    for method in ("encode", "decode"):
        register_fsdp_forward_method(model, method)
    model.set_reshard_after_forward(False, recurse=False)
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.FSDP,
        state=SimpleNamespace(fsdp_plugin=SimpleNamespace(reshard_after_forward=True)),
    )
    src = torch.randint(4, 50, (8, 9))
    src[:, -1] = 3
    model(src, src).float().sum().backward()  # lazy initialisation
    gathers.clear()
    model(src, src).float().sum().backward()
    print(f"training step: {sum(gathers.values())} all-gathers {dict(gathers)}")
    model.eval()
    ids = SpecialIds(pad=0, eos=3, start=2)
    with torch.no_grad():
        gathers.clear()
        plain = greedy(model, src, ids, 20, [0, 2])
        print(f"greedy, {plain.size(1)} steps: {sum(gathers.values())} all-gathers")
        gathers.clear()
        with train.gathered_for_decoding(model, accelerator):
            kept = greedy(model, src, ids, 20, [0, 2])
        print(
            f"greedy inside gathered_for_decoding: {sum(gathers.values())} all-gathers, "
            f"same tokens: {torch.equal(plain, kept)}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    # no options: --help prints what it measures instead of running it
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    main()
