"""Model copies M_i(x) = softmax(C(x) / tau) + alpha * pi_i(T_0(x)); the label is argmax M_i(x).

`ModelCopy` is what one buyer receives (a hard-label black box: only its argmax is meant to be
visible). `CopySet` is the seller's view of all m copies: it scores every copy from ONE forward pass
of C and T_0 plus an O(m * K) gather, because copies differ only by the permutation.

Permutation convention (see permutations.py): copy i sends tracer output j to class slot
perm[i, j], so T_i(x)[c] = T_0(x)[inv[i, c]] with inv[i] the inverse permutation of perm[i].
Past max_copies(K) copies (permutations.copy_layout) the tracer has G * K outputs and copy i reads
block b_i of them: T_i(x)[c] = T_0(x)[b_i * K + inv[i, c]]; block 0 is the single-tracer case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advforensics.errors import InputValidationError
from advforensics.tracing.permutations import check_layout
from advforensics.tracing.tracer import Tracer, state_hash


@dataclass(frozen=True)
class CopyParams:
    """What makes the copies: the mixing weight alpha and C's softmax temperature tau."""

    alpha: float = 0.15
    tau: float = 2.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not (0.0 < float(self.alpha) <= 1.0):
            raise InputValidationError(f"alpha: must be in (0, 1], got {self.alpha}")
        if not (float(self.tau) > 0.0):
            raise InputValidationError(f"tau: must be > 0, got {self.tau}")


def inverse_permutations(perms: torch.Tensor) -> torch.Tensor:
    """(m, K) -> (m, K) inverses: inv[i, perm[i, j]] = j."""
    inv = torch.empty_like(perms)
    inv.scatter_(1, perms, torch.arange(perms.shape[1]).expand_as(perms).contiguous())
    return inv


@torch.no_grad()
def check_classes(classifier: nn.Module, tracer: Tracer, num_classes: int) -> None:
    """Raise InputValidationError unless C scores `num_classes` classes (one probe image): a K-entry
    permutation fits a G * K-output tracer for any G, so only C can say what K is."""
    scored = classifier.eval()(torch.zeros(1, *tracer.input_shape)).shape[-1]
    if scored != num_classes:
        raise InputValidationError(f"the permutations have {num_classes} entries, the classifier scores {scored} classes")


class ModelCopy(nn.Module):
    """One buyer's copy. forward(x (B, C, H, W) in [0, 1]) -> scores (B, K); label = argmax."""

    def __init__(self, classifier: nn.Module, tracer: Tracer, permutation: torch.Tensor,
                 params: CopyParams, block: int = 0) -> None:
        super().__init__()
        perm = torch.as_tensor(permutation, dtype=torch.int64).reshape(1, -1)
        check_layout(perm, torch.tensor([int(block)]), tracer.num_outputs)
        check_classes(classifier, tracer, perm.shape[1])
        self.classifier = classifier.eval()
        self.tracer = tracer.eval()
        self.alpha = float(params.alpha)
        self.tau = float(params.tau)
        self.block = int(block)
        # (K,): the tracer outputs this copy reads, class slot by class slot
        self.register_buffer("inverse", inverse_permutations(perm)[0] + self.block * perm.shape[1])
        self.eval()

    def train(self, mode: bool = True) -> ModelCopy:
        """Copies are shipped, never trained: stay in eval mode (an attack's `model.train(was_training)`
        must not switch the shared C and T_0 into training mode, e.g. batch-norm batch statistics)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # ART's hard-label attacks hand in float64
        probs = torch.softmax(self.classifier(x) / self.tau, dim=1)  # (B, K)
        traced = self.tracer(x)[:, self.inverse]  # (B, K): T_i(x)
        return probs + self.alpha * traced


class CopySet(nn.Module):
    """All m copies of one (C, T_0): shared forward pass, then a gather per copy."""

    def __init__(self, classifier: nn.Module, tracer: Tracer, permutations: torch.Tensor,
                 params: CopyParams, blocks: torch.Tensor | None = None) -> None:
        super().__init__()
        perms = torch.as_tensor(permutations, dtype=torch.int64)
        blocks = torch.zeros(len(perms), dtype=torch.int64) if blocks is None else \
            torch.as_tensor(blocks, dtype=torch.int64)
        check_layout(perms, blocks, tracer.num_outputs)
        check_classes(classifier, tracer, perms.shape[1])
        self.classifier = classifier.eval()
        self.tracer = tracer.eval()
        self.params = params
        self.register_buffer("permutations", perms)  # (m, K)
        self.register_buffer("blocks", blocks)  # (m,) tracer block of each copy
        # (m, K): the tracer outputs each copy reads
        self.register_buffer("inverse", inverse_permutations(perms) + blocks.view(-1, 1) * perms.shape[1])
        self.eval()

    def train(self, mode: bool = True) -> CopySet:
        """Always eval mode (see ModelCopy.train)."""
        return super().train(False)

    @property
    def num_copies(self) -> int:
        return int(self.permutations.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.permutations.shape[1])

    def base_hash(self) -> str:
        return state_hash(self.classifier)

    def copy(self, index: int) -> ModelCopy:
        """The buyer-facing module of copy `index` (shares C and T_0, no weights duplicated)."""
        if not 0 <= index < self.num_copies:
            raise InputValidationError(f"copy index {index} outside 0..{self.num_copies - 1}")
        return ModelCopy(self.classifier, self.tracer, self.permutations[index], self.params,
                         block=int(self.blocks[index]))

    @torch.no_grad()
    def shared_pass(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(softmax(C(x)/tau) (B, K), T_0(x) (B, G K)): the only network evaluations."""
        x = x.float()
        probs = torch.softmax(self.classifier(x) / float(self.params.tau), dim=1)
        return probs, self.tracer(x)

    def traced_outputs(self, t0: torch.Tensor) -> torch.Tensor:
        """T_0 outputs (B, G K) -> every copy's permuted outputs T_i (B, m, K) by one gather."""
        index = self.inverse.unsqueeze(0).expand(len(t0), -1, -1)  # (B, m, K)
        return torch.gather(t0.unsqueeze(1).expand(-1, self.num_copies, -1), 2, index)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M (B, m, K) every copy's scores, T (B, m, K) every copy's tracer outputs)."""
        probs, t0 = self.shared_pass(x)
        traced = self.traced_outputs(t0)  # (B, m, K)
        return probs.unsqueeze(1) + float(self.params.alpha) * traced, traced

    @torch.no_grad()
    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m) hard labels of every copy."""
        return self.scores(x)[0].argmax(dim=2)
