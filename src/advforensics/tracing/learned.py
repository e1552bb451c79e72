"""The learned tracing rule: a scorer the seller fits on attackers it simulates on its own copies.

No single formula traces in every regime (docs/tracing.md): boundary-type scores are exact when the
example sits on its copy's boundary and fail once it was pushed through; direction-type scores are
the reverse, and re-encoding moves the example back across. The seller holds every copy, so it can
make examples of every regime itself and learn how the per-copy features combine:

- `simulate` crafts minimal-L2 boundary points on each copy (`min_norm_points`, a white-box stand-in
  for the buyer's hard-label attack) and applies attacker behaviours (minimal, overshoot, transfer-
  seeking to one or all other copies) and re-encodings (PNG, JPEG, noise). Controls, labelled "none
  of these copies", are made the same way on C alone and on look-alike copies with another tracer,
  plus clean images.
- `LearnedScorer` scores each copy with one small network shared by all copies (so it is
  permutation-equivariant and takes any number of copies), and adds a "none" alternative scored
  from the shared context; a softmax over the m + 1 alternatives gives probabilities.
  Its features (scores.py) read the one shared pass ("base", the default); the "squeezed" set
  (`FitConfig.features`) also reads C's label on the contrast-stretched example (`scores.squeeze`):
  once an example is pushed so far that C itself is fooled, that label is still the clean class, so
  the tracer difference of the class pair the attack rode stays readable. It costs one more pass of
  C per traced example. A rule stores the names of the features it reads (records made before the
  choice existed hold the base set).
- `fit_learned_rule` trains it, then fits a temperature on held-out simulated images.

An accusation needs two keys (reports.py): the learned probability, and a formula rule that names
the same copy with the confidence of its own null; the stated confidence is the weaker of the two.
On field controls the learned probability alone over-accused (1.4-3% at 0.99; docs/tracing.md).

The rule is stored in the seller record as plain JSON (numbers only, covered by the record hash).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from advforensics.errors import CheckpointError, InputValidationError
from advforensics.evidence.transforms import reencode
from advforensics.tracing.behaviours import along, low_pass, transfer_seeking
from advforensics.tracing.calibration import boundary_points, min_norm_points
from advforensics.tracing.copies import CopySet
from advforensics.tracing.scores import CONTEXT_FEATURES, COPY_FEATURES, FEATURE_SETS, copy_features
from advforensics.tracing.tracer import create_tracer

log = logging.getLogger(__name__)

LEARNED_FORMAT = "advforensics-learned-rule/1"
BEHAVIOURS = ("minimal", "overshoot", "transfer-1", "transfer-all", "low-pass")
REENCODINGS = ("none", "none", "png", "png", "jpeg:95", "jpeg:85", "jpeg:70", "noise:1", "noise:3")
CONTROLS = ("c-alone", "look-alike", "clean")


@dataclass
class SimulationConfig:
    """What the seller simulates. Images are clean, correctly classified images of the seller's own."""

    behaviours: tuple[str, ...] = BEHAVIOURS
    reencodings: tuple[str, ...] = REENCODINGS
    controls: tuple[str, ...] = CONTROLS
    landing: tuple[float, float] = (1e-5, 3e-3)  # log-uniform relative overshoot of the attack's end point
    overshoot: tuple[float, float] = (1.02, 1.5)
    variants: int = 3  # behaviour x re-encoding draws per boundary point (the points are the cost)
    imprecision: float = 1.2  # largest turn of an imprecise attack's direction, relative to its norm
    imprecise_share: float = 0.7
    look_alike_seed: int = 7919  # not the study's look-alike control (seed 1000): that one stays unseen
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.behaviours) - set(BEHAVIOURS)
        if unknown or not self.behaviours:
            raise InputValidationError(f"behaviours must be some of {', '.join(BEHAVIOURS)}; got {self.behaviours}")
        unknown = set(self.controls) - set(CONTROLS)
        if unknown:
            raise InputValidationError(f"controls must be some of {', '.join(CONTROLS)}; got {self.controls}")
        for spec in self.reencodings:
            reencode(torch.zeros(1, 1, 2, 2), spec)  # raises on an unknown spec


class _Softmax(nn.Module):
    """C alone, as its own boundary-defining model (the control attacker who ignores the copies)."""

    def __init__(self, classifier: nn.Module, tau: float) -> None:
        super().__init__()
        self.classifier, self.tau = classifier.eval(), tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(x.float()) / self.tau, dim=1)


@dataclass
class SimulatedSet:
    """Features of simulated evidence and the truth: target in 0..m-1 (the source) or m (none)."""

    features: torch.Tensor  # (N, m, F)
    context: torch.Tensor  # (N, Cx)
    target: torch.Tensor  # (N,)
    group: torch.Tensor  # (N,) index of the clean image (for splitting without leaks)
    kind: list[str] = field(default_factory=list)  # per row: "<model>/<behaviour>/<re-encoding>"
    copy_names: tuple[str, ...] = COPY_FEATURES  # what the columns of `features` are
    context_names: tuple[str, ...] = CONTEXT_FEATURES


def _behave(copies: CopySet, model: nn.Module, behaviour: str, source: torch.Tensor, x0: torch.Tensor,
            x_b: torch.Tensor, labels: torch.Tensor, config: SimulationConfig, gen: torch.Generator) -> torch.Tensor:
    lo, hi = (torch.log10(torch.tensor(v)) for v in config.landing)
    landed = along(x0, x_b, 1 + 10 ** (lo + (hi - lo) * torch.rand(len(x0), generator=gen)))
    if behaviour == "minimal":
        return landed
    if behaviour == "low-pass":
        return low_pass(model, x0, landed, labels)[0]
    if behaviour == "overshoot":
        a, b = config.overshoot
        return along(x0, x_b, a + (b - a) * torch.rand(len(x0), generator=gen))
    others = 1 if behaviour == "transfer-1" else None
    pushed, _ = transfer_seeking(copies, source, x0, landed, labels, others=others)
    return pushed


def _imprecise(model: nn.Module, x0: torch.Tensor, x_b: torch.Tensor, ok: torch.Tensor, config: SimulationConfig,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Real attacks land on the boundary along a worse direction than the minimal one (HopSkipJump's
    median L2 is 1.3x min-norm's here): for a share of the points, turn the perturbation by random
    noise of up to `config.imprecision` of its norm and land on the boundary along the new direction."""
    if config.imprecision <= 0:
        return x_b, ok
    rows = (torch.rand(len(x0), generator=gen) < config.imprecise_share) & ok
    if not rows.any():
        return x_b, ok
    delta = x_b[rows] - x0[rows]
    noise = torch.randn(delta.shape, generator=gen)
    scale = delta.flatten(1).norm(dim=1) * config.imprecision * torch.rand(int(rows.sum()), generator=gen)
    noise = noise * (scale / noise.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    far = (x0[rows] + 2.0 * (delta + noise)).clamp(0, 1)  # past the boundary along the turned direction
    landed, valid = boundary_points(model, x0[rows], far)
    out, keep = x_b.clone(), ok.clone()
    out[rows] = torch.where(valid.view(-1, 1, 1, 1), landed, x_b[rows])
    return out, keep


def simulate(copies: CopySet, images: torch.Tensor, labels: torch.Tensor,
             config: SimulationConfig | None = None) -> SimulatedSet:
    """Simulated evidence on every copy and on the controls, from clean `images` (N, C, H, W) with their
    labels (N,). Each image serves one model (copies and controls in turn), so no image is reused
    across models; each boundary point yields `config.variants` examples (rows share its group)."""
    config = config or SimulationConfig()
    gen = torch.Generator().manual_seed(config.seed)
    m = copies.num_copies
    c, h, w = copies.tracer.input_shape
    look_alike = CopySet(copies.classifier, create_tracer(
        "random", num_outputs=copies.tracer.num_outputs, in_channels=c, image_size=(h, w),
        seed=config.look_alike_seed), copies.permutations, copies.params, blocks=copies.blocks)
    models: list[tuple[str, int, nn.Module | None]] = [(f"copy{i}", i, copies.copy(i)) for i in range(m)]
    if "c-alone" in config.controls:
        models.append(("c-alone", m, _Softmax(copies.classifier, float(copies.params.tau))))
    if "look-alike" in config.controls:
        models += [(f"look-alike{i}", m, look_alike.copy(i)) for i in range(min(m, 2))]
    if "clean" in config.controls:
        models.append(("clean", m, None))
    order = torch.randperm(len(images), generator=gen)
    shares = order.chunk(len(models))
    xs, targets, groups, kinds = [], [], [], []
    for (name, target, model), idx in zip(models, shares):
        x0, y = images[idx], labels[idx]
        if model is None:
            x_b, ok = x0, torch.ones(len(x0), dtype=torch.bool)
        else:
            x_b, ok = min_norm_points(model, x0, y)  # the cost of the simulation; variants reuse it
            x_b, ok = _imprecise(model, x0, x_b, ok, config, gen)
        source = torch.full((len(x0),), target if target < m else -1)
        for _ in range(1 if model is None else config.variants):
            if model is None:
                x_out, behaviour_of = x0.clone(), ["clean"] * len(x0)
            else:
                picks = torch.randint(len(config.behaviours), (len(x0),), generator=gen)
                x_out = x_b.clone()
                for j, behaviour in enumerate(config.behaviours):
                    rows = (picks == j) & ok
                    if rows.any():
                        x_out[rows] = _behave(copies, model, behaviour, source[rows], x0[rows], x_b[rows], y[rows],
                                              config, gen)
                behaviour_of = [config.behaviours[int(p)] for p in picks]
            codes = torch.randint(len(config.reencodings), (len(x0),), generator=gen)
            for j, spec in enumerate(config.reencodings):
                rows = (codes == j) & ok
                if rows.any():
                    x_out[rows] = reencode(x_out[rows], spec, seed=int(torch.randint(1 << 30, (1,), generator=gen)))
            keep = ok.nonzero().squeeze(1)
            xs.append(x_out[keep])
            targets.append(torch.full((len(keep),), target))
            groups.append(idx[keep])
            kinds += [f"{name}/{behaviour_of[int(i)]}/{config.reencodings[int(codes[i])]}" for i in keep]
        log.info("simulated %d boundary points on %s", int(ok.sum()), name)
    x = torch.cat(xs)
    features, context = copy_features(copies, x)
    return SimulatedSet(features=features, context=context, target=torch.cat(targets), group=torch.cat(groups),
                        kind=kinds)


class LearnedScorer(nn.Module):
    """Scores (B, m + 1): one shared network per copy, and a "none of these copies" alternative.
    `copy_names` / `context_names`: the features it reads (scores.COPY_FEATURES and CONTEXT_FEATURES
    by default; a rule stored with the 11 + 6 features of earlier records reads those alone)."""

    def __init__(self, copy_inputs: int, context_inputs: int, hidden: int = 32,
                 copy_names: tuple[str, ...] | None = None, context_names: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.copy_names = tuple(copy_names) if copy_names is not None else COPY_FEATURES[:copy_inputs]
        self.context_names = tuple(context_names) if context_names is not None else CONTEXT_FEATURES[:context_inputs]
        if len(self.copy_names) != copy_inputs or len(self.context_names) != context_inputs:
            raise InputValidationError("a learned scorer's feature names must match its input sizes")
        self.copy_net = nn.Sequential(nn.Linear(copy_inputs + context_inputs, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.none_net = nn.Sequential(nn.Linear(context_inputs + 3, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("copy_mean", torch.zeros(copy_inputs))
        self.register_buffer("copy_std", torch.ones(copy_inputs))
        self.register_buffer("context_mean", torch.zeros(context_inputs))
        self.register_buffer("context_std", torch.ones(context_inputs))
        self.register_buffer("temperature", torch.ones(()))

    def logits(self, features: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """features (B, m, F), context (B, Cx) -> untempered logits (B, m + 1); the last is "none"."""
        f = (features - self.copy_mean) / self.copy_std
        ctx = (context - self.context_mean) / self.context_std
        per_copy = self.copy_net(torch.cat([f, ctx.unsqueeze(1).expand(-1, f.shape[1], -1)], 2)).squeeze(2)
        top = per_copy.topk(min(2, per_copy.shape[1]), dim=1).values
        second = top[:, 1] if top.shape[1] > 1 else top[:, 0]
        summary = torch.stack([top[:, 0], second, per_copy.mean(1)], 1)
        return torch.cat([per_copy, self.none_net(torch.cat([ctx, summary], 1))], 1)

    def forward(self, features: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities (B, m + 1)."""
        return torch.softmax(self.logits(features, context) / self.temperature, dim=1)


@dataclass
class FitConfig:
    hidden: int = 32
    epochs: int = 80
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    holdout: float = 0.2  # share of clean images whose examples fit the temperature
    seed: int = 0
    # which of the simulated features the rule reads (scores.FEATURE_SETS): "base", the one shared pass;
    # "squeezed" adds C's label on the squeezed example (transfer-to-all rows +7 to +12 points on the
    # study's attacks, one more pass of C per example: docs/tracing.md)
    features: str = "base"

    def __post_init__(self) -> None:
        if self.features not in FEATURE_SETS:
            raise InputValidationError(f"features must be one of {', '.join(FEATURE_SETS)}; got {self.features!r}")


def _select(data: SimulatedSet, copy_names: tuple[str, ...], context_names: tuple[str, ...]) -> SimulatedSet:
    """The simulated set with only the named feature columns, in that order."""
    if copy_names == data.copy_names and context_names == data.context_names:
        return data
    missing = [n for n in copy_names if n not in data.copy_names] + [
        n for n in context_names if n not in data.context_names]
    if missing:
        raise InputValidationError(f"the simulated set has no features {missing}")
    return SimulatedSet(features=data.features[:, :, [data.copy_names.index(n) for n in copy_names]],
                        context=data.context[:, [data.context_names.index(n) for n in context_names]],
                        target=data.target, group=data.group, kind=data.kind, copy_names=copy_names,
                        context_names=context_names)


def fit_learned_rule(data: SimulatedSet, config: FitConfig | None = None) -> LearnedScorer:
    """Train the scorer on simulated evidence, then fit its temperature on held-out images."""
    config = config or FitConfig()
    data = _select(data, *FEATURE_SETS[config.features])
    gen = torch.Generator().manual_seed(config.seed)
    groups = data.group.unique()
    held = groups[torch.randperm(len(groups), generator=gen)[: max(1, int(config.holdout * len(groups)))]]
    is_held = torch.isin(data.group, held)
    train, tune = (~is_held).nonzero().squeeze(1), is_held.nonzero().squeeze(1)
    if len(train) == 0 or len(tune) == 0:
        raise InputValidationError("too few simulated examples to fit the learned rule")
    torch.manual_seed(config.seed)
    model = LearnedScorer(data.features.shape[2], data.context.shape[1], config.hidden, data.copy_names,
                          data.context_names)
    flat = data.features[train].flatten(0, 1)
    model.copy_mean.copy_(flat.mean(0))
    model.copy_std.copy_(flat.std(0).clamp_min(1e-3))
    model.context_mean.copy_(data.context[train].mean(0))
    model.context_std.copy_(data.context[train].std(0).clamp_min(1e-3))
    # every alternative weighs the same in the loss: "none" rows are about a third of the data
    counts = torch.bincount(data.target[train], minlength=data.features.shape[1] + 1).float()
    weight = (counts.sum() / counts.clamp_min(1)) / len(counts)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    for epoch in range(config.epochs):
        perm = train[torch.randperm(len(train), generator=gen)]
        total = 0.0
        for batch in perm.split(config.batch_size):
            optimiser.zero_grad()
            loss = loss_fn(model.logits(data.features[batch], data.context[batch]), data.target[batch])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        if epoch % 20 == 0 or epoch == config.epochs - 1:
            log.info("learned rule epoch %d: loss %.4f", epoch, total / len(train))
    model.eval()
    with torch.no_grad():
        logits = model.logits(data.features[tune], data.context[tune])
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), data.target[tune])
        loss.backward()
        return loss

    opt.step(closure)
    model.temperature.fill_(float(log_t.detach().exp()))
    log.info("learned rule temperature %.3f on %d held-out examples", float(model.temperature), len(tune))
    return model


def scorer_to_dict(model: LearnedScorer, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scorer as JSON-safe numbers (stored inside the seller record)."""
    return {"format": LEARNED_FORMAT, "copy_features": list(model.copy_names), "context_features": list(model.context_names),
            "hidden": int(model.copy_net[0].out_features),
            "state": {k: v.tolist() for k, v in model.state_dict().items()}, "info": dict(info or {})}


def scorer_from_dict(payload: dict[str, Any]) -> LearnedScorer:
    """Rebuild a stored scorer; a record from another feature set or a damaged one -> CheckpointError."""
    if payload.get("format") != LEARNED_FORMAT:
        raise CheckpointError("the record's learned rule has an unknown format")
    copy_names, context_names = payload.get("copy_features"), payload.get("context_features")
    state = payload.get("state") or {}
    if (not isinstance(copy_names, list) or not isinstance(context_names, list)
            or any(n not in COPY_FEATURES for n in copy_names) or any(n not in CONTEXT_FEATURES for n in context_names)
            or len(state.get("copy_mean", ())) != len(copy_names)
            or len(state.get("context_mean", ())) != len(context_names)):
        raise CheckpointError("the record's learned rule was fitted on other features; refit it (trace separate)")
    try:
        model = LearnedScorer(len(copy_names), len(context_names), int(payload["hidden"]), tuple(copy_names),
                              tuple(context_names))
        state = {k: torch.tensor(v, dtype=torch.float32) for k, v in payload["state"].items()}
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"the record's learned rule does not load: {error}") from None
    return model.eval()


def simulation_to_dict(config: SimulationConfig, fit: FitConfig) -> dict[str, Any]:
    return {"simulation": asdict(config), "fit": asdict(fit)}


def fit_rule(copies: CopySet, images: torch.Tensor, labels: torch.Tensor, seed: int = 0,
             simulation: SimulationConfig | None = None, fit: FitConfig | None = None,
             features: str | None = None) -> dict[str, Any]:
    """Simulate attackers on the copies from clean (images, labels) and fit the learned rule; returns
    the JSON-safe rule that `make_copies` stores in the record. `features`: a scores.FEATURE_SETS name
    (overrides `fit.features`)."""
    with torch.no_grad():
        right = copies.classifier(images.float()).argmax(1) == labels
    images, labels = images[right], labels[right]
    if len(images) < 20 * (copies.num_copies + 4):
        raise InputValidationError(f"fitting the learned rule needs at least {20 * (copies.num_copies + 4)} "
                                   f"correctly classified images, got {len(images)}")
    simulation = simulation or SimulationConfig(seed=seed)
    fit = fit or FitConfig(seed=seed)
    if features is not None:
        fit = FitConfig(**{**asdict(fit), "features": features})
    data = simulate(copies, images, labels, simulation)
    scorer = fit_learned_rule(data, fit)
    return scorer_to_dict(scorer, info={"images": int(len(images)), "examples": int(len(data.target)),
                                        **simulation_to_dict(simulation, fit)})
