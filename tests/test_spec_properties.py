"""Properties of the spec language, checked on generated input with Hypothesis.

* Any valid spec survives ``dump_spec`` → ``parse_yaml`` → ``validate_data`` unchanged.
* The duration, comparison and margin parsers round-trip what they are given, and
  ``Comparison.holds`` agrees with Python's operators.
* ``render_path`` and ``parse_path`` are inverses.
"""

from __future__ import annotations

import copy
import operator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline.spec.loader import dump_spec, validate_data
from loopline.spec.model import Spec
from loopline.spec.sections.base import (
    COLUMN_PATTERN,
    NAME_PATTERN,
    Comparison,
    Margin,
    parse_comparison,
    parse_duration,
    parse_margin,
)
from loopline.spec.sections.training import COST_OBJECTIVES, metrics_for
from loopline.spec.yaml_io import dump_yaml, parse_path, parse_yaml, render_path

PROPERTY_SETTINGS = settings(
    max_examples=100, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# --- building blocks -----------------------------------------------------------------------

names = st.from_regex(NAME_PATTERN, fullmatch=True)
# Column names drawn from the full pattern are long and slow to shrink; 1-20 characters keep
# the same alphabet and first-character rule.
assert COLUMN_PATTERN.startswith("^[A-Za-z_][A-Za-z0-9_]")
columns = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,19}", fullmatch=True)
# Free text: any character a file can hold (not lone surrogates), tabs and line breaks included.
# U+0085 (NEL) is left out: dump_spec loses it (see test_next_line_character_survives_a_dump).
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x85"), max_size=40)
nonempty_text = text.filter(lambda s: s.strip() != "")
finite = st.floats(allow_nan=False, allow_infinity=False)
fractions = st.floats(0.0, 1.0)
open_fractions = st.floats(0.001, 0.49)
positive_floats = st.floats(min_value=1e-9, max_value=1e9)
positive_ints = st.integers(1, 10_000)
seeds = st.integers(-(2**63), 2**63 - 1)

DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
durations = st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 10_000),
                      st.sampled_from(list(DURATION_UNITS)))
comparison_ops = st.sampled_from([">=", "<=", ">", "<", "=="])
comparisons = st.builds(lambda op, space, value: f"{op}{space}{value!r}", comparison_ops,
                        st.sampled_from(["", " ", "  "]), finite)
decimals = st.builds(lambda whole, frac: f"{whole}.{frac}" if frac else str(whole),
                     st.integers(0, 1000), st.sampled_from(["", "0", "5", "01", "25"]))
margins = st.builds(lambda sign, amount, pct: f"{sign}{amount}{pct}", st.sampled_from(["+", "-", ""]),
                    decimals, st.sampled_from(["", "%"]))
crons = st.sampled_from(["0 * * * *", "*/15 * * * *", "0 3 * * 0", "30 2 1 * *", "0 0 * * 1-5"])


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``strategy`` or nothing: the key is then left out of the generated mapping."""
    return st.one_of(st.none(), strategy)


def put(target: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` unless ``value`` is None (so optional keys are sometimes absent)."""
    if value is not None:
        target[key] = value


def ordered_pair(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(values, min_size=2, max_size=2).map(sorted)


# --- hyperparameters and their search spaces -----------------------------------------------

# For each algorithm: hyperparameter → (strategy for a fixed value, strategies for a search).
def _float_search(values: st.SearchStrategy[float], *, log: bool) -> list[st.SearchStrategy[Any]]:
    spaces = [
        ordered_pair(values).map(lambda pair: {"uniform": pair}),
        st.lists(values, min_size=1, max_size=4).map(lambda xs: {"choice": xs}),
    ]
    if log:
        spaces.append(ordered_pair(values).map(lambda pair: {"log_uniform": pair}))
    return spaces


def _int_search(values: st.SearchStrategy[int], *, nullable: bool = False) -> list[st.SearchStrategy[Any]]:
    choice_values = st.one_of(st.none(), values) if nullable else values

    def int_space(pair: list[int], step: int | None) -> dict[str, Any]:
        space: dict[str, Any] = {"int": pair}
        put(space, "step", step)
        return space

    return [
        st.builds(int_space, ordered_pair(values), maybe(st.integers(1, 50))),
        st.lists(choice_values, min_size=1, max_size=4).map(lambda xs: {"choice": xs}),
    ]


_class_weight = (st.sampled_from([None, "balanced"]),
                 [st.lists(st.sampled_from([None, "balanced"]), min_size=1, max_size=2, unique=True)
                  .map(lambda xs: {"choice": xs})])
_small_ints = st.integers(1, 500)
_hidden = st.lists(st.integers(1, 512), min_size=1, max_size=8)

HYPERPARAMETERS: dict[str, dict[str, tuple[st.SearchStrategy[Any], list[st.SearchStrategy[Any]]]]] = {
    "logistic_regression": {
        "C": (positive_floats, _float_search(positive_floats, log=True)),
        "max_iter": (positive_ints, _int_search(positive_ints)),
        "class_weight": _class_weight,
    },
    "random_forest": {
        "n_estimators": (_small_ints, _int_search(_small_ints)),
        "max_depth": (maybe(_small_ints), _int_search(_small_ints, nullable=True)),
        "min_samples_leaf": (_small_ints, _int_search(_small_ints)),
        "class_weight": _class_weight,
    },
    "gradient_boosting": {
        "n_estimators": (_small_ints, _int_search(_small_ints)),
        "max_depth": (maybe(_small_ints), _int_search(_small_ints, nullable=True)),
        "learning_rate": (positive_floats, _float_search(positive_floats, log=True)),
        "min_samples_leaf": (_small_ints, _int_search(_small_ints)),
    },
    "lightning_mlp": {
        "hidden": (_hidden, [st.lists(_hidden, min_size=1, max_size=3).map(lambda xs: {"choice": xs})]),
        "dropout": (st.floats(0.0, 0.99), [
            *_float_search(st.floats(0.0, 0.99), log=False),
            ordered_pair(st.floats(0.01, 0.99)).map(lambda p: {"log_uniform": p}),
        ]),
        "lr": (positive_floats, _float_search(positive_floats, log=True)),
        "weight_decay": (st.floats(0.0, 1.0), _float_search(st.floats(0.0, 1.0), log=False)),
        "batch_size": (positive_ints, _int_search(positive_ints)),
    },
}

trainers = st.fixed_dictionaries({}, optional={
    "accelerator": st.sampled_from(["auto", "cpu", "gpu", "cuda", "mps"]),
    "devices": st.one_of(st.just("auto"), st.integers(1, 8)),
    "strategy": st.sampled_from(["auto", "ddp", "ddp_spawn", "fsdp", "deepspeed", "single_device"]),
    "num_nodes": st.integers(1, 4),
    "precision": st.sampled_from(["32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true"]),
    "max_epochs": st.integers(1, 200),
    "early_stopping": st.fixed_dictionaries({}, optional={
        "monitor": st.from_regex(r"(val|train)_[a-z0-9_]{1,10}", fullmatch=True),
        "patience": st.integers(1, 20),
        "mode": st.sampled_from(["min", "max"]),
    }),
    "checkpointing": st.booleans(),
    "deterministic": st.booleans(),
})


@st.composite
def algorithms(draw: st.DrawFn, kind: str, name: str | None) -> dict[str, Any]:
    hyper = HYPERPARAMETERS[kind]
    algorithm: dict[str, Any] = {"kind": kind}
    put(algorithm, "name", name)
    fixed = draw(st.lists(st.sampled_from(sorted(hyper)), unique=True))
    if fixed or draw(st.booleans()):
        algorithm["params"] = {key: draw(hyper[key][0]) for key in fixed}
    searched = draw(st.lists(st.sampled_from(sorted(hyper)), unique=True))
    if searched or draw(st.booleans()):
        algorithm["search"] = {key: draw(st.one_of(hyper[key][1])) for key in searched}
    if kind == "lightning_mlp" and draw(st.booleans()):
        algorithm["trainer"] = draw(trainers)
    return algorithm


# --- whole specs ---------------------------------------------------------------------------


def _schedules() -> st.SearchStrategy[dict[str, Any]]:
    # A schedule's interval is a second at least (faster than Prefect schedules runs).
    intervals = durations.filter(lambda d: not d.endswith("ms") or int(d[:-2]) >= 1000)
    base = st.one_of(crons.map(lambda c: {"cron": c}), intervals.map(lambda d: {"interval": d}))
    return st.builds(lambda s, tz: {**s, **({"timezone": tz} if tz else {})}, base,
                     st.sampled_from([None, "UTC", "Europe/Paris"]))


QUALITY_BOUNDS: dict[str, st.SearchStrategy[Any]] = {
    "disagreement_rate": comparisons, "prediction_drift": comparisons,
    "regression_tolerance": positive_floats, "alpha": open_fractions,
}


@st.composite
def routings(draw: st.DrawFn, sticky_choices: list[str]) -> dict[str, Any]:
    kind = draw(st.sampled_from(["single", "ab", "canary", "shadow", "bandit", None]))
    if kind is None:
        return {}  # the default, single
    routing: dict[str, Any] = {"kind": kind}
    sticky = st.sampled_from(sticky_choices)
    if kind == "ab":
        put(routing, "challenger_share", draw(maybe(fractions)))
        put(routing, "sticky_by", draw(maybe(sticky)))
    elif kind == "canary":
        if draw(st.booleans()):
            routing["steps"] = sorted(draw(st.lists(fractions, min_size=1, max_size=6, unique=True)))
        if draw(st.booleans()):
            routing["hold"] = None
            routing["hold_requests"] = draw(st.integers(1, 10**6))
        else:
            put(routing, "hold", draw(maybe(durations)))
        if draw(st.booleans()):
            routing["rollback_if"] = draw(st.fixed_dictionaries({}, optional={
                "error_rate": comparisons, "p95_latency_ms": comparisons, "min_answers": positive_ints,
                **QUALITY_BOUNDS}))
        put(routing, "sticky_by", draw(maybe(sticky)))
    elif kind == "shadow":
        put(routing, "sample", draw(maybe(fractions)))
        put(routing, "predictions", draw(maybe(positive_ints)))
        if draw(st.booleans()):
            routing["reject_if"] = draw(st.fixed_dictionaries({}, optional=QUALITY_BOUNDS))
    elif kind == "bandit":
        put(routing, "prior_alpha", draw(maybe(positive_floats)))
        put(routing, "prior_beta", draw(maybe(positive_floats)))
    return routing


notifications = st.one_of(
    st.fixed_dictionaries({"kind": st.just("slack"),
                           "channel": st.from_regex(r"[#@]?[A-Za-z0-9_.-]{1,20}", fullmatch=True),
                           "token_secret": names},
                          optional={"min_severity": st.sampled_from(["info", "high", "critical"])}),
    st.fixed_dictionaries({"kind": st.just("webhook"),
                           "url": st.from_regex(r"https?://[a-z0-9.-]{1,20}/[A-Za-z0-9/_-]{0,20}",
                                                fullmatch=True)},
                          optional={"min_severity": st.sampled_from(["info", "high", "critical"])}),
    st.fixed_dictionaries({"kind": st.just("log")},
                          optional={"min_severity": st.sampled_from(["info", "high", "critical"])}),
)


@st.composite
def data_validations(draw: st.DrawFn, known: list[str]) -> dict[str, Any]:
    cols = st.sampled_from(known)
    return draw(st.fixed_dictionaries({}, optional={
        "required": st.dictionaries(cols, st.sampled_from(
            ["float32", "float64", "int8", "int64", "uint8", "bool", "string"]), max_size=3),
        "completeness": st.dictionaries(cols, fractions, max_size=3),
        "unique": st.lists(cols, max_size=2, unique=True),
        "ranges": st.dictionaries(cols, ordered_pair(finite), max_size=3),
        "categories": st.dictionaries(cols, st.lists(text, min_size=1, max_size=3), max_size=2),
        "on_failure": st.sampled_from(["quarantine", "stop"]),
    }))


@st.composite
def spec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec as plain data, as YAML would give it."""
    n_features = draw(st.integers(1, 6))
    cols = draw(st.lists(columns, min_size=n_features + 3, max_size=n_features + 3, unique=True))
    target, entity_id, event_time, features = cols[0], cols[1], cols[2], cols[3:]
    use_event_time = draw(st.booleans())

    spec: dict[str, Any] = {"name": draw(names), "description": draw(nonempty_text)}
    put(spec, "owner", draw(maybe(text)))

    data: dict[str, Any] = {
        "source": draw(st.sampled_from(["data/x.csv", "s3://bucket/x.parquet", "x.csv.gz",
                                        "/abs/path/rows.pq", "s3://bucket/export"])),
        "target": target,
    }
    use_entity_id = draw(st.booleans())  # optional: rows are then identified by position
    if use_entity_id:
        data["entity_id"] = entity_id
    if data["source"].endswith("export") or draw(st.booleans()):
        data["format"] = draw(st.sampled_from(["csv", "parquet"]))
    if use_event_time:
        data["event_time"] = event_time
    split_kind = draw(st.sampled_from(["random", "time", None] if use_event_time else ["random", None]))
    if split_kind is not None:
        split: dict[str, Any] = {"kind": split_kind}
        put(split, "validation", draw(maybe(open_fractions)))
        put(split, "test", draw(maybe(open_fractions)))
        if split_kind == "random":
            put(split, "seed", draw(maybe(seeds)))
        data["split"] = split
    if draw(st.booleans()):
        data["validation"] = draw(data_validations(cols))
    spec["data"] = data

    # Features: computed ones and passthrough groups, every name used once.
    entries: list[dict[str, Any]] = []
    remaining = list(features)
    while remaining:
        if draw(st.booleans()):
            take = draw(st.integers(1, len(remaining)))
            # A source column of any name, renamed to the feature's (never the target: a leak).
            renames = st.text(min_size=1, max_size=12).filter(lambda column: column != target)
            entries.append({"passthrough": [
                {"column": draw(renames), "as": name} if draw(st.booleans()) else name
                for name in remaining[:take]]})
            remaining = remaining[take:]
        else:
            feature: dict[str, Any] = {
                "name": remaining.pop(0),
                "expr": draw(st.sampled_from(["a / (b + 1)", "x", "CASE WHEN a > 1 THEN 1 ELSE 0 END"])),
                "dtype": draw(st.sampled_from(["float64", "int8", "bool", "string", "uint32"])),
            }
            put(feature, "description", draw(maybe(text)))
            entries.append(feature)
    spec["features"] = entries

    task = draw(st.sampled_from(["classification", "regression"]))
    known_metrics = sorted(metrics_for(task))
    kinds = ["random_forest", "gradient_boosting", "lightning_mlp"]
    if task == "classification":
        kinds.append("logistic_regression")
    drawn_kinds = draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=4))
    training: dict[str, Any] = {
        "metric": {"name": draw(st.sampled_from(known_metrics))},
        "algorithms": [
            draw(algorithms(kind, None if kind not in drawn_kinds[:i] else f"candidate-{i}"))
            for i, kind in enumerate(drawn_kinds)
        ],
    }
    if task == "regression" or draw(st.booleans()):
        training["task"] = task
    put(training["metric"], "direction", draw(maybe(st.sampled_from(["maximize", "minimize"]))))
    put(training, "seed", draw(maybe(seeds)))
    if draw(st.booleans()):
        objectives = st.fixed_dictionaries({
            "metric": st.sampled_from(known_metrics + sorted(COST_OBJECTIVES)),
            "direction": st.sampled_from(["maximize", "minimize"]),
        })
        training["sweep"] = draw(st.fixed_dictionaries({}, optional={
            "sampler": st.sampled_from(["tpe", "random", "grid"]),
            "pruner": st.sampled_from(["none", "median", "hyperband"]),
            "n_trials": st.integers(1, 1000),
            "timeout": durations,
            "parallelism": st.integers(1, 64),
            "objectives": st.lists(objectives, max_size=3),
            "storage": st.sampled_from(["sqlite", "journal", "postgresql://u@h:5432/db",
                                        "postgresql+psycopg://u:p@db/optuna"]),
            "seed": seeds,
        }))
        sweep = training["sweep"]
        # SQLite is for one worker (the spec refuses it under parallel trials)...
        if sweep.get("storage", "sqlite") == "sqlite" and sweep.get("parallelism", 1) > 1:
            sweep["storage"] = "journal"
        # ...and a grid can only enumerate choices and integer ranges.
        if sweep.get("sampler") == "grid" and any(
            "uniform" in dist or "log_uniform" in dist
            for algorithm in training["algorithms"] for dist in algorithm.get("search", {}).values()
        ):
            sweep["sampler"] = "random"
    spec["training"] = training

    metric_names = st.sampled_from(known_metrics)
    gates: dict[str, Any] = {"model_card": {"intended_use": draw(nonempty_text)}}
    gates["model_card"].update(draw(st.fixed_dictionaries({}, optional={
        "limitations": text, "ethical_considerations": text, "approved": st.booleans(),
        "approved_by": maybe(text)})))
    gates.update(draw(st.fixed_dictionaries({}, optional={
        "thresholds": st.dictionaries(metric_names, comparisons, max_size=3),
        "champion_margin": st.dictionaries(metric_names, margins, max_size=3),
        "on_pass": st.sampled_from(["staging", "production"]),
    })))
    spec["gates"] = gates

    feature_names = [n if isinstance(n, str) else n["as"] for e in entries
                     for n in (e["passthrough"] if "passthrough" in e else [e["name"]])]
    serving: dict[str, Any] = {}
    routing = draw(routings([entity_id, *feature_names] if use_entity_id else feature_names))
    if routing:
        serving["routing"] = routing
    if draw(st.booleans()):
        serving["auth"] = draw(st.one_of(
            st.fixed_dictionaries({"api_keys_secret": names}, optional={"api_keys_env": columns}),
            st.fixed_dictionaries({"api_keys_env": columns}),
        ))
    put(serving, "workers", draw(maybe(st.one_of(st.integers(1, 64), st.just("auto")))))
    put(serving, "batching", draw(maybe(st.fixed_dictionaries({}, optional={
        "enabled": st.booleans(), "max_batch": st.integers(1, 4096),
        "max_latency_ms": st.floats(0, 1000)}))))
    put(serving, "tracing", draw(maybe(st.booleans())))
    put(serving, "port", draw(maybe(st.integers(1, 65535))))
    if serving or draw(st.booleans()):
        spec["serving"] = serving

    monitoring: dict[str, Any] = {}
    put(monitoring, "schedule", draw(maybe(_schedules())))
    put(monitoring, "window", draw(maybe(durations)))
    put(monitoring, "alert_cooldown", draw(maybe(durations)))
    if draw(st.booleans()):
        high, critical = sorted(draw(st.lists(fractions, min_size=2, max_size=2)))
        monitoring["drift"] = draw(st.fixed_dictionaries({}, optional={
            "method": st.sampled_from(["auto", "ks", "chi2", "wasserstein", "psi", "jensenshannon"]),
            "per_feature": st.dictionaries(st.sampled_from(feature_names), st.sampled_from(
                ["ks", "chi2", "wasserstein", "psi", "jensenshannon"]), max_size=3),
            "threshold": positive_floats,
            "drift_share": fractions,
            "severity": st.just({"high": high, "critical": critical}),
            "min_samples": st.integers(1, 10_000),
        }))
    if draw(st.booleans()):
        alert = st.fixed_dictionaries({"metric": metric_names, "below": finite},
                                      optional={"action": st.sampled_from(["alert", "retrain", "rollback"])})
        monitoring["performance"] = draw(st.fixed_dictionaries({}, optional={
            "label_source": st.just("feedback"), "window": durations,
            "alerts": st.lists(alert, max_size=3)}))
    if monitoring or draw(st.booleans()):
        spec["monitoring"] = monitoring

    triggers = ["drift", "schedule", "manual"] + (["performance"] if "performance" in monitoring else [])
    if draw(st.booleans()):
        retraining: dict[str, Any] = {"on": draw(st.lists(st.sampled_from(triggers), unique=True))}
        if "schedule" in retraining["on"] or draw(st.booleans()):
            retraining["schedule"] = draw(_schedules())
        retraining.update(draw(st.fixed_dictionaries({}, optional={
            "cooldown": durations, "max_per_day": st.integers(1, 24),
            "sweep": st.sampled_from(["reuse_best", "full"])})))
        spec["retraining"] = retraining
    if draw(st.booleans()):
        spec["notifications"] = draw(st.lists(notifications, max_size=3))
    return spec


def _valid(data: dict[str, Any]) -> Spec:
    spec, problems = validate_data(data)
    assert spec is not None, [f"{p.path}: {p.message}" for p in problems]
    return spec


@PROPERTY_SETTINGS
@given(spec_dicts())
def test_generated_specs_are_valid(data: dict[str, Any]) -> None:
    """The generator only writes valid specs (so the round trip below tests something)."""
    spec = _valid(data)
    assert spec.name == data["name"]
    assert len(spec.training.algorithms) == len(data["training"]["algorithms"])


@PROPERTY_SETTINGS
@given(spec_dicts())
def test_any_valid_spec_survives_dump_and_load(data: dict[str, Any]) -> None:
    spec = _valid(data)
    text_form = dump_spec(spec)
    parsed, problems = parse_yaml(text_form)
    assert parsed is not None, problems
    again, problems = validate_data(parsed.data, parsed)
    assert again is not None, [f"{p.path}: {p.message}" for p in problems]
    assert again == spec
    assert again.content_hash() == spec.content_hash()
    assert dump_spec(again) == text_form


@PROPERTY_SETTINGS
@given(spec_dicts())
def test_content_hash_ignores_how_the_spec_was_written(data: dict[str, Any]) -> None:
    """Key order and left-out defaults do not change the hash: it is over the validated spec."""
    spec = _valid(data)
    reordered = _valid(dict(reversed(list(data.items()))))
    assert reordered.content_hash() == spec.content_hash()
    explicit = _valid(spec.model_dump(mode="json", by_alias=True))
    assert explicit.content_hash() == spec.content_hash()


def test_next_line_character_survives_a_dump() -> None:
    spec = _valid({
        "name": "nel", "description": "first\x85second",
        "data": {"source": "x.csv", "target": "y", "entity_id": "id"},
        "features": [{"passthrough": ["a"]}],
        "training": {"metric": {"name": "f1"}, "algorithms": [{"kind": "random_forest"}]},
        "gates": {"model_card": {"intended_use": "tests"}},
    })
    parsed, _ = parse_yaml(dump_spec(spec))
    assert parsed is not None
    assert _valid(parsed.data).description == "first\x85second"


def _mappings(data: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """The path of every mapping in ``data``, those tagged by one of their own keys included (a
    passthrough entry, a search distribution: see the golden files passthrough_stray_key.yaml and
    search_option_typo.yaml)."""
    found: list[tuple[str | int, ...]] = []
    if isinstance(data, dict):
        found.append(path)
        for key, value in data.items():
            found += _mappings(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _mappings(value, (*path, index))
    return found


@PROPERTY_SETTINGS
@given(spec_dicts(), st.data())
def test_a_stray_key_is_reported_where_it_is(data: dict[str, Any], draw: st.DataObject) -> None:
    """Add ``zz_stray: x`` to any mapping of a valid spec: exactly that path is reported, on the
    line where the key is written."""
    data = copy.deepcopy(data)
    where = draw.draw(st.sampled_from(_mappings(data)))
    target = data
    for part in where:
        target = target[part]
    target["zz_stray"] = "x"
    parsed, problems = parse_yaml(dump_yaml(data))
    assert parsed is not None, problems
    spec, problems = validate_data(parsed.data, parsed)
    stray = (*where, "zz_stray")
    assert spec is None
    assert {problem.path for problem in problems} == {render_path(stray)}
    assert all(problem.fix for problem in problems)
    assert {problem.line for problem in problems} == {parsed.lines[stray]}


# --- parsers -------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(st.integers(1, 10**6), st.sampled_from(list(DURATION_UNITS)), st.sampled_from(["", " ", "\t"]))
def test_duration_round_trip(amount: int, unit: str, pad: str) -> None:
    parsed = parse_duration(f"{pad}{amount}{unit}{pad}")
    assert parsed == timedelta(seconds=amount * DURATION_UNITS[unit])


@PROPERTY_SETTINGS
@given(st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False),
       st.sampled_from(list(DURATION_UNITS)))
def test_fractional_durations(amount: Any, unit: str) -> None:
    written = f"{amount:f}"
    if float(amount) * DURATION_UNITS[unit] <= 0:
        with pytest.raises(ValueError, match="longer than zero"):
            parse_duration(f"{written}{unit}")
    else:
        assert parse_duration(f"{written}{unit}").total_seconds() == pytest.approx(
            float(written) * DURATION_UNITS[unit])


@PROPERTY_SETTINGS
@given(st.text(st.characters(blacklist_characters="smhdw"), max_size=8))
def test_duration_rejects_text_without_a_unit(junk: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(junk)


@pytest.mark.parametrize("junk", ["s", "5", "5x", "m5", "-5m", "5 m", "5M", "1.m", ".5m", "0s", "0.0h"])
def test_duration_rejects_malformed_text(junk: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(junk)


@PROPERTY_SETTINGS
@given(comparison_ops, finite, st.sampled_from(["", " ", "  "]), st.sampled_from(["", " ", "\t"]))
def test_comparison_round_trip(op: str, value: float, space: str, pad: str) -> None:
    comparison = parse_comparison(f"{pad}{op}{space}{value!r}{pad}")
    assert comparison == Comparison(op=op, value=value)  # type: ignore[arg-type]
    # str() is the display form (6 significant digits): it parses back to the same operator.
    assert parse_comparison(str(comparison)).op == op


_OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


@PROPERTY_SETTINGS
@given(comparison_ops, finite, finite)
def test_comparison_holds_agrees_with_python(op: str, threshold: float, observed: float) -> None:
    comparison = parse_comparison(f"{op} {threshold!r}")
    assert comparison.holds(observed) is _OPERATORS[op](observed, threshold)
    assert comparison.holds(threshold) is (op in (">=", "<=", "=="))


@PROPERTY_SETTINGS
@given(st.sampled_from(["+", "-", ""]), decimals, st.booleans())
def test_margin_round_trip(sign: str, amount: str, percent: bool) -> None:
    margin = parse_margin(f"{sign}{amount}{'%' if percent else ''}")
    value = float(f"{sign}{amount}")
    assert margin.relative is percent
    assert margin.amount == pytest.approx(value / 100.0 if percent else value)


@PROPERTY_SETTINGS
@given(st.floats(-1e6, 1e6), st.floats(0.0, 1.0), st.booleans())
def test_margin_moves_the_bar_in_the_metric_direction(champion: float, amount: float,
                                                      relative: bool) -> None:
    margin = Margin(amount=amount, relative=relative)
    up = margin.required(champion, "maximize")
    down = margin.required(champion, "minimize")
    assert up >= champion >= down
    assert up - champion == pytest.approx(champion - down)
    step = abs(champion) * amount if relative else amount
    assert up == pytest.approx(champion + step)


# --- paths ---------------------------------------------------------------------------------

path_keys = st.text(st.characters(blacklist_characters=".[]", blacklist_categories=("Cs",)),
                    min_size=1, max_size=12)
paths = st.lists(st.one_of(path_keys, st.integers(0, 10_000)), max_size=8).map(tuple)


@PROPERTY_SETTINGS
@given(paths)
def test_parse_path_inverts_render_path(path: tuple[str | int, ...]) -> None:
    assert parse_path(render_path(path)) == path


@PROPERTY_SETTINGS
@given(paths)
def test_render_path_inverts_parse_path(path: tuple[str | int, ...]) -> None:
    rendered = render_path(path)
    assert render_path(parse_path(rendered)) == rendered


def test_render_path_examples() -> None:
    assert render_path(("training", "algorithms", 0, "search", "lr")) == "training.algorithms[0].search.lr"
    assert render_path(("features", 2, "passthrough", 1)) == "features[2].passthrough[1]"
    assert render_path(()) == ""
    assert parse_path("") == ()
    assert parse_path("data.split.kind") == ("data", "split", "kind")
