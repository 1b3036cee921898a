"""``semi_structured``: 2:4 semi-structured sparsity (two zeros in every four consecutive weights of a row), which
NVIDIA's sparse tensor cores (Ampere and later) multiply at up to twice the dense rate.

The two smallest-magnitude weights of every group of four inputs of the transformer layers' linear weights are
zeroed; the model is cast to bf16 (fp16 on a GPU without bf16), which the sparse kernels need, and each weight whose
shape the kernels accept is converted to torch's semi-structured sparse tensor
(``torch.sparse.to_sparse_semi_structured``), so the final evaluation and the throughput figure run the sparse
kernels. The export is a dense Hugging Face directory (in that dtype) holding the 2:4 zeros, which transformers
and vLLM load as a plain model (dense: the zeros save no space on disk). CUDA only: refused on the CPU.
"""

from __future__ import annotations

from tessera.core.compression import Compressed, ExportFormat
from tessera.core.errors import ConfigError
from tessera.core.techniques import Compressor
from tessera.plugins.compressors.surgery import layer_linears


def two_four_mask(weight):
    """The boolean mask that keeps the two largest-magnitude entries of every four consecutive ones along each row
    (``weight``'s last dimension must be a multiple of 4)."""
    import torch

    groups = weight.detach().abs().reshape(-1, 4)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, torch.topk(groups, 2, dim=1).indices, True)
    return mask.view_as(weight)


def fits_sparse_kernels(weight) -> bool:
    """Whether torch's semi-structured kernels take ``weight``'s shape in its dtype (both dimensions multiples of
    the backend's minimum block)."""
    from torch.sparse import (
        SparseSemiStructuredTensor,
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
    )

    # The backend to_sparse_semi_structured picks, and its minimum block per dtype.
    backend = (
        SparseSemiStructuredTensorCUTLASS
        if SparseSemiStructuredTensor._FORCE_CUTLASS
        else SparseSemiStructuredTensorCUSPARSELT
    )
    constraint = backend._DTYPE_SHAPE_CONSTRAINTS.get(weight.dtype)
    rows, columns = weight.shape
    return (
        constraint is not None and rows % constraint.sparse_min_rows == 0 and columns % constraint.sparse_min_cols == 0
    )


def save_dense(model, tokenizer, directory) -> None:
    """A Hugging Face directory with the sparse weights written dense (their 2:4 zeros kept)."""
    import torch
    from torch.sparse import SparseSemiStructuredTensor

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, SparseSemiStructuredTensor):
            module.weight = torch.nn.Parameter(weight.to_dense(), requires_grad=False)
    model.save_pretrained(directory, safe_serialization=True)


#: A dense Hugging Face export holding the 2:4 zeros: transformers and vLLM load it as a plain model.
DENSE_TWO_FOUR = ExportFormat("huggingface", save_dense)


class SemiStructured(Compressor):
    """2:4 magnitude sparsity on the transformer layers' linear weights, run with torch's sparse CUDA kernels."""

    name = "semi_structured"

    def validate(self, composition):
        import torch

        from tessera.core.trainer import resolve_device

        device, _ = resolve_device(composition.cfg.trainer)
        if device != "cuda":
            raise ConfigError(
                f"{self.label} needs a CUDA GPU (torch's 2:4 sparse kernels); trainer.device resolves to {device} "
                "here: use magnitude_prune or structured_prune on the CPU"
            )
        if torch.cuda.get_device_capability() < (8, 0):
            raise ConfigError(f"{self.label} needs an Ampere or later GPU (compute capability 8.0) for 2:4 kernels")

    def compress(self, model, context):
        import torch
        from torch.sparse import to_sparse_semi_structured

        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model = model.to(device="cuda", dtype=dtype)
        sparse = pruned = 0
        with torch.no_grad():
            for _, module in layer_linears(model):
                if module.weight.shape[-1] % 4:
                    continue
                weight = module.weight * two_four_mask(module.weight)
                pruned += 1
                if fits_sparse_kernels(weight):
                    module.weight = torch.nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
                    sparse += 1
                else:
                    module.weight.copy_(weight)
        return Compressed(
            model,
            format=DENSE_TWO_FOUR,
            details={"pattern": "2:4", "dtype": str(dtype).removeprefix("torch."), "linears": pruned, "sparse": sparse},
        )
