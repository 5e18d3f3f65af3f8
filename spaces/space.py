"""The compression search space: what a search may try for one teacher model.

A :class:`CompressionSpace` turns a teacher's layers plus one :class:`~metacompress.spaces.domains.Domain` per
policy field into a flat set of named parameters (``prune.<group>``, ``bits.<group>``, ``kd_lambda``, ...). Search
engines only see those parameters (through :mod:`metacompress.spaces.adapters`); a trial turns them back into a
:class:`~metacompress.spaces.policy.CompressionPolicy` with :meth:`CompressionSpace.decode`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from .domains import Categorical, Domain, Float, Int, Ordinal, is_int
from .errors import ConfigError, invalid_value, missing_key, unknown_key
from .grouping import normalize_grouping, resolve_groups
from .layers import LayerInfo
from .policy import POLICY_SCALARS, CompressionPolicy, LayerPolicy, check_value

__all__ = ["CompressionSpace", "DOMAIN_NAMES"]

#: Names of the space's domains, in parameter order: per-group ``prune`` and ``bits``, then the policy scalars.
DOMAIN_NAMES: tuple[str, ...] = ("prune", "bits", *POLICY_SCALARS)


def _as_domain(name: str, value: Any) -> Domain:
    """Turn a domain argument into a checked :class:`Domain`; a plain value (or None) becomes a constant."""
    field = f"space.{name}"
    if isinstance(value, Domain):
        domain = value
    elif isinstance(value, Mapping):
        domain = Domain.from_dict(value, field=field)
    else:
        try:
            domain = Categorical((value,))
        except ConfigError:
            allowed = "a Domain, its dict form, or a constant (str, int, float, bool or None)"
            raise invalid_value(field, allowed, value) from None
    for landmark in domain.landmarks():
        check_value(name, landmark, field)
    return domain


def _check_layers(layers: Any) -> tuple[LayerInfo, ...]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
        raise invalid_value("space.layers", "a non-empty sequence of LayerInfo", layers)
    out = tuple(
        info if isinstance(info, LayerInfo) else LayerInfo.from_dict(info, field="space.layers") for info in layers
    )
    seen: set[str] = set()
    for info in out:
        if info.name in seen:
            raise invalid_value("space.layers", "a sequence of layers with unique names", info.name)
        seen.add(info.name)
    return out


class CompressionSpace:
    """Per-group prune ratio and bit width plus distillation settings, over one model's layers.

    A domain with a single value (e.g. the default ``prune_method``, or a plain value such as ``epochs=2``) is
    constant: it is not a searched parameter, but :meth:`decode` applies it.

    With ``prune_method="structured"``, layers whose :attr:`LayerInfo.structured` is False get prune 0.0 whatever
    their group's value, because channel pruning cannot touch them (e.g. a classifier head).

    Args:
        layers: The compressible layers, in model order.
        grouping: ``"per-layer"``, ``"auto"`` or ``{group: regex}``; see :mod:`metacompress.spaces.grouping`.
        prune: Prune ratio of each group, values in [0, 1).
        bits: Weight bit width of each group, values in ``ALLOWED_BITS``.
        prune_method: ``unstructured`` and/or ``structured``.
        act_bits: Activation bits; None (the default) keeps float activations.
        kd_lambda: Weight λ of the label loss against the distillation loss (``λ·CE + (1−λ)·T²·KL``), in [0, 1].
        temperature: Distillation temperature, > 0.
        epochs: Fine-tuning epochs, integers >= 0.
        lr: Fine-tuning learning rate, > 0.
        feature_beta: Feature-map distillation weight, >= 0 (constant 0.0 by default).
        prox_mu: Proximal term weight, >= 0 (constant 0.0 by default).

    Each domain argument may be a :class:`Domain`, its ``to_dict`` form, or a plain constant value.

    Raises:
        ConfigError: Invalid layers, grouping, or a domain holding a value the policy does not allow.
    """

    def __init__(
        self,
        layers: Sequence[LayerInfo],
        *,
        grouping: str | Mapping[str, str] = "per-layer",
        prune: Domain = Float(0.0, 0.95),
        bits: Domain = Ordinal((2, 3, 4, 5, 6, 8)),
        prune_method: Domain = Categorical(("unstructured",)),
        act_bits: Domain | None = None,
        kd_lambda: Domain = Float(0.0, 1.0),
        temperature: Domain = Float(1.0, 8.0),
        epochs: Domain = Int(1, 3),
        lr: Domain = Float(1e-4, 1e-2, log=True),
        feature_beta: Domain | float = 0.0,
        prox_mu: Domain | float = 0.0,
    ) -> None:
        self._layers = _check_layers(layers)
        self._grouping = normalize_grouping(grouping)
        self._groups = resolve_groups(self._layers, self._grouping)
        given = dict(prune=prune, bits=bits, prune_method=prune_method, act_bits=act_bits, kd_lambda=kd_lambda,
                     temperature=temperature, epochs=epochs, lr=lr, feature_beta=feature_beta, prox_mu=prox_mu)
        self._domains = {name: _as_domain(name, given[name]) for name in DOMAIN_NAMES}
        # every parameter name, searched or constant -> (domain name, group or None)
        self._sources: dict[str, tuple[str, str | None]] = {}
        for kind in ("prune", "bits"):
            self._sources.update({f"{kind}.{group}": (kind, group) for group in self._groups})
        self._sources.update({name: (name, None) for name in POLICY_SCALARS})
        self._params = {
            key: self._domains[kind] for key, (kind, _) in self._sources.items() if not self._domains[kind].is_constant
        }

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def layers(self) -> tuple[LayerInfo, ...]:
        """The layers, in model order."""
        return self._layers

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The layer names, in model order."""
        return tuple(info.name for info in self._layers)

    @property
    def n_params(self) -> dict[str, int]:
        """Weight elements per layer (the ``weights`` argument of ``CompressionPolicy.mean_bits``)."""
        return {info.name: info.n_params for info in self._layers}

    @property
    def grouping(self) -> str | dict[str, str]:
        """The grouping, normalized: a mode name or an ordered ``{group: regex}`` dict."""
        return self._grouping if isinstance(self._grouping, str) else dict(self._grouping)

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """``{group: layer names}``: the layers sharing one prune ratio and one bit width."""
        return dict(self._groups)

    @property
    def domains(self) -> dict[str, Domain]:
        """Every domain by name (:data:`DOMAIN_NAMES`), constant ones included."""
        return dict(self._domains)

    @property
    def params(self) -> dict[str, Domain]:
        """The searched parameters, in a stable order: ``prune.<group>``..., ``bits.<group>``..., then scalars."""
        return dict(self._params)

    # ------------------------------------------------------------------------------------------ params <-> policy
    def _full_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``params`` and add the constant values: every parameter name -> value."""
        if not isinstance(params, Mapping):
            raise invalid_value("params", "a mapping of parameter name to value", params)
        for key, value in params.items():
            if key not in self._sources:
                raise unknown_key("params", str(key), self._sources, what="keys")
            domain = self._domains[self._sources[key][0]]
            if not domain.contains(value):
                raise invalid_value(key, domain.describe(), value)
        out: dict[str, Any] = {}
        for key, (kind, _) in self._sources.items():
            domain = self._domains[kind]
            if key in params:
                out[key] = params[key]
            elif domain.is_constant:
                out[key] = domain.constant_value
            else:
                raise missing_key(key)
        return out

    def decode(self, params: Mapping[str, Any]) -> CompressionPolicy:
        """Turn a trial's parameters into a validated policy listing every layer.

        Args:
            params: One value per searched parameter. Constant parameters may be given too (they must then hold
                the constant value).

        Raises:
            ConfigError: A missing searched parameter, an unknown one (with a did-you-mean hint), or a value
                outside its domain.
        """
        values = self._full_values(params)
        structured = values["prune_method"] == "structured"
        group_of = {name: group for group, names in self._groups.items() for name in names}
        plans = {}
        for info in self._layers:
            group = group_of[info.name]
            prune = 0.0 if structured and not info.structured else float(values[f"prune.{group}"])
            plans[info.name] = LayerPolicy(prune=prune, bits=int(values[f"bits.{group}"]))
        policy = CompressionPolicy(layers=plans, **{name: values[name] for name in POLICY_SCALARS})
        return policy.validate(self.layer_names)

    def encode(self, policy: CompressionPolicy, *, clip: bool = False) -> dict[str, Any]:
        """Return the searched parameters of ``policy`` (the inverse of :meth:`decode`).

        Exact for policies that are constant within each group; otherwise a group takes the value of its first
        layer (its first channel-prunable layer for a structured prune ratio). Useful to enqueue warm starts.

        Args:
            policy: The policy.
            clip: Project values outside a domain to the nearest value inside instead of raising.

        Raises:
            ConfigError: Invalid policy, or (``clip=False``) a value outside its parameter's domain.
        """
        if not isinstance(policy, CompressionPolicy):
            raise invalid_value("policy", "a CompressionPolicy", policy)
        policy.validate(self.layer_names)
        out: dict[str, Any] = {}
        for key, domain in self._params.items():
            kind, group = self._sources[key]
            value = getattr(policy, kind) if group is None else getattr(self._representative(policy, group), kind)
            if clip:
                try:
                    value = domain.project(value)
                except ConfigError:
                    raise invalid_value(key, domain.describe(), value) from None
            elif not domain.contains(value):
                raise invalid_value(key, domain.describe(), value)
            out[key] = value
        return out

    def _representative(self, policy: CompressionPolicy, group: str) -> LayerPolicy:
        names = self._groups[group]
        if policy.prune_method == "structured":
            infos = {info.name: info for info in self._layers}
            names = tuple(n for n in names if infos[n].structured) or names
        return policy.layer(names[0])

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Return True if :meth:`decode` accepts ``params``."""
        try:
            self.decode(params)
        except ConfigError:
            return False
        return True

    # ------------------------------------------------------------------------------------------------- designs
    def sample(self, rng: random.Random) -> dict[str, Any]:
        """Draw one value per searched parameter with ``rng``."""
        return {key: domain.sample(rng) for key, domain in self._params.items()}

    def space_filling(self, n: int, seed: int) -> list[dict[str, Any]]:
        """Return ``n`` parameter dicts from a scrambled Sobol design over the searched parameters.

        The design has the next power of two of points; the first ``n`` are kept.

        Args:
            n: Number of points, >= 0.
            seed: Scrambling seed.
        """
        if not is_int(n) or n < 0:
            raise invalid_value("n", "an integer >= 0", n)
        if not is_int(seed):
            raise invalid_value("seed", "an integer", seed)
        names = list(self._params)
        if n == 0 or not names:
            return [{} for _ in range(n)]
        from scipy.stats import qmc  # lazy: keep `import metacompress.spaces` light

        try:
            sobol = qmc.Sobol(d=len(names), scramble=True, rng=int(seed))
        except TypeError:  # scipy < 1.15
            sobol = qmc.Sobol(d=len(names), scramble=True, seed=int(seed))
        points = sobol.random_base2(m=(int(n) - 1).bit_length())[: int(n)]
        return [{key: self._params[key].from_unit(float(u)) for key, u in zip(names, row)} for row in points]

    # ---------------------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict: layers, grouping (a mode or ``[[group, regex], ...]``), and every domain."""
        grouping = self._grouping if isinstance(self._grouping, str) else [[g, r] for g, r in self._grouping.items()]
        return {
            "layers": [info.to_dict() for info in self._layers],
            "grouping": grouping,
            "domains": {name: domain.to_dict() for name, domain in self._domains.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompressionSpace:
        """Build a space from :meth:`to_dict` output; ``grouping`` and any domain may be omitted (defaults)."""
        if not isinstance(d, Mapping):
            raise invalid_value("space", "a mapping with keys layers, grouping, domains", d)
        for key in d:
            if key not in ("layers", "grouping", "domains"):
                raise unknown_key("space", str(key), ("layers", "grouping", "domains"), what="keys")
        if "layers" not in d:
            raise missing_key("space.layers")
        domains = d.get("domains", {})
        if not isinstance(domains, Mapping):
            raise invalid_value("space.domains", "a mapping of domain name to domain", domains)
        for name in domains:
            if name not in DOMAIN_NAMES:
                raise unknown_key("space.domains", str(name), DOMAIN_NAMES, what="keys")
        return cls(d["layers"], grouping=d.get("grouping", "per-layer"), **domains)

    def fingerprint(self) -> str:
        """Stable sha1 hex digest of the canonical JSON of :meth:`to_dict` (refuses resuming a different space)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompressionSpace) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        searched = ", ".join(self._params) or "nothing"
        return f"CompressionSpace({len(self._layers)} layers, {len(self._groups)} groups; searches {searched})"
