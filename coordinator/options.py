"""The tuner's options, each declared once: name, kind, default, help, choices, bounds, CLI flag
spellings and campaign-spec key. Everything else is derived from this table:

* the `coordinator tune` flags (`add_arguments`, `values_from_args`, the choices in --help);
* the campaign spec: the keys each section accepts, the parsing and its error messages
  (`parse_spec_values`), and the wire JSON (`spec_sections`);
* the fields of `TuneConfig` and `CampaignSpec` (`option_fields`) and their validation (`validate`).

Adding an option is one `Option(...)` below plus its use. Choices are looked up lazily from where
they live (strategies, rankers, recipes, objectives), never repeated here."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from coordinator.preprocess import LABEL_SOURCES, is_number
from shared.errors import InvalidArgument

MAX_INPUT_SHAPES = 256             # --input-shape values (a model has this many inputs at most, in practice)
KINDS = ("int", "number", "fraction", "choice", "choices", "bool", "function", "text", "shapes")


@dataclass(frozen=True)
class Option:
    name: str                         # TuneConfig / CampaignSpec field and argparse dest
    kind: str                         # one of KINDS
    default: Any
    help: str
    flags: tuple[str, ...] = ()       # CLI spellings (the first is used in messages); () = spec only
    spec: str = ""                    # "section.key", or "key" at the top level of the spec
    choices: Callable[[], Sequence[str]] | None = None   # allowed values (choice) or items (choices)
    minimum: float | None = None      # int: >= minimum; number: > minimum
    maximum: float | None = None      # int and number: <= maximum
    min_items: int = 0                # choices: at least this many
    tune: bool = True                 # a TuneConfig field; False: the campaign's own (not part of results)
    metavar: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: kind {self.kind!r} is not one of {KINDS}")

    @property
    def label(self) -> str:
        """How a user names it: the CLI flag, else the spec key."""
        return self.flags[0] if self.flags else self.spec

    @property
    def section(self) -> str:
        return self.spec.rpartition(".")[0]

    @property
    def key(self) -> str:
        return self.spec.rpartition(".")[2]

    def allowed(self) -> tuple[str, ...]:
        return tuple(self.choices()) if self.choices is not None else ()

    def check(self, value: Any) -> tuple[Any, list[str]]:
        """(normalised value, problems): None stands for the default; lists become tuples."""
        if value is None:
            return self.default, []
        return getattr(self, f"_check_{self.kind}")(value)

    def _check_int(self, value: Any) -> tuple[Any, list[str]]:
        low, high = self.minimum, self.maximum
        if not isinstance(value, int) or isinstance(value, bool) or not (low is None or value >= low) \
                or not (high is None or value <= high):
            upper = f" and <= {self.maximum:g}" if self.maximum is not None else ""
            return self.default, [f"{value!r} must be an integer >= {self.minimum:g}{upper}"]
        return value, []

    def _check_number(self, value: Any) -> tuple[Any, list[str]]:
        low = 0 if self.minimum is None else self.minimum
        if not is_number(value) or value <= low or (self.maximum is not None and value > self.maximum):
            upper = f" and <= {self.maximum:g}" if self.maximum is not None else ""
            return self.default, [f"{value!r} must be a number > {low:g}{upper}"]
        return float(value), []

    def _check_fraction(self, value: Any) -> tuple[Any, list[str]]:
        if not is_number(value) or not 0 <= value <= 1:
            return self.default, [f"{value!r} must be a fraction between 0 and 1"]
        return float(value), []

    def _check_choice(self, value: Any) -> tuple[Any, list[str]]:
        allowed = self.allowed()
        if value not in allowed:
            return self.default, [f"{value!r} is not one of {', '.join(allowed)}"]
        return value, []

    def _check_choices(self, value: Any) -> tuple[Any, list[str]]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            return self.default, [f"{value!r} must be a list of non-empty strings"]
        allowed = self.allowed()
        problems = [f"{v!r} is not one of {', '.join(allowed)}" for v in value if v not in allowed]
        if len(value) < self.min_items:
            problems.append(f"{list(value)!r} must name at least {self.min_items} of {', '.join(allowed)}")
        return (self.default, problems) if problems else (tuple(value), [])

    def _check_bool(self, value: Any) -> tuple[Any, list[str]]:
        if not isinstance(value, bool):
            return self.default, [f"{value!r} must be true or false"]
        return value, []

    def _check_function(self, value: Any) -> tuple[Any, list[str]]:
        from shared.plugins import is_function_path

        if not is_function_path(value):
            return self.default, [f"{value!r} must name a function as module:function"]
        return value, []

    def _check_text(self, value: Any) -> tuple[Any, list[str]]:
        if not isinstance(value, str) or not value.strip():
            return self.default, [f"{value!r} must be a non-empty string"]
        return value, []

    def _check_shapes(self, value: Any) -> tuple[Any, list[str]]:
        """'NAME:1x3x640x640' strings (coordinator/shapes.py), normalised and sorted by name."""
        from coordinator.shapes import canonical_input_shapes

        if not isinstance(value, (list, tuple)):
            return self.default, [f"{value!r} must be a list of NAME:DIMS strings (e.g. x:1x3x640x640)"]
        if len(value) > MAX_INPUT_SHAPES:
            return self.default, [f"names {len(value)} input shapes; at most {MAX_INPUT_SHAPES}"]
        try:
            return canonical_input_shapes(value, self.label), []
        except InvalidArgument as exc:
            return self.default, [str(exc.args[0]).removeprefix(f"{self.label} ")]


# -- where choices live (imported only when asked: strategies pull in pymoo) ----------------------
def _strategies() -> Sequence[str]:
    from coordinator.strategies import STRATEGIES

    return sorted(STRATEGIES)


def _ranking_methods() -> Sequence[str]:
    from coordinator.tuner.catalog import RANKING_METHODS

    return RANKING_METHODS


def _recipe_probes() -> Sequence[str]:
    from coordinator.tuner.catalog import RECIPE_PROBES

    return tuple(RECIPE_PROBES)


def _tasks() -> Sequence[str]:
    from shared.metrics import TASKS

    return TASKS


def _data_layouts() -> Sequence[str]:
    from coordinator.tensor_data import DATA_LAYOUTS

    return DATA_LAYOUTS


def _objectives() -> Sequence[str]:
    from coordinator.pareto import OBJECTIVES

    return tuple(OBJECTIVES)


def _preferences() -> Sequence[str]:
    from coordinator.tuner.catalog import PREFERENCES

    return PREFERENCES


OPTIONS: tuple[Option, ...] = (
    Option("labels", "choice", "synset", "labels from the file name's synset prefix, or none",
           ("--labels",), "data.labels", lambda: LABEL_SOURCES),
    Option("n_calibration", "int", 64, "calibration images", ("--calibration",), "data.calibration", minimum=1),
    Option("n_eval", "int", 300, "evaluation images", ("--eval",), "data.eval", minimum=1),
    Option("latency_runs", "int", 20, "batch-1 timed runs per candidate", ("--latency-runs",), "data.latency_runs",
           minimum=0, maximum=100_000),
    Option("seed", "int", 0, "seed of the image split and the search", ("--seed",), "data.seed", minimum=0,
           maximum=2**32 - 1),
    Option("input_shape", "shapes", (),
           "fix a model input's dynamic dimensions, NAME:DIMS (repeatable; e.g. x:1x3x640x640); by default the "
           "data's sizes are used and the batch stays dynamic", ("--input-shape",), "data.input_shapes",
           metavar="NAME:DIMS"),
    Option("data_layout", "choice", "auto",
           "what one sample of a tensor dataset (--data) is: batched (a row of each input's batch, stacked "
           "along its first dim) or whole-feed (one complete feed, every input exactly as the model takes it: "
           "0-d scalars, a batch on another axis; run one inference per sample); auto: batched when the files "
           "read so, else whole-feed", ("--data-layout",), "data.data_layout", _data_layouts),
    Option("task", "choice", "auto",
           "which fidelity metrics apply (auto: classification when the first output is (N, C) scores, dense "
           "when an output has spatial dims, else generic); every task gets SQNR and cosine per output",
           ("--task",), "data.task", _tasks),
    Option("metric", "function", None,
           "a user metric module:function, called with the FP32 and candidate outputs ({name: array}) and "
           "returning {name: number}; runs where the outputs are (on the farm: agents started with "
           "--allow-metric, the module importable there)", ("--metric",), "strategy.metric",
           metavar="MODULE:FUNCTION"),
    Option("objectives", "choices", ("accuracy_loss", "size_bytes", "latency"),
           "objectives of the Pareto front (latency: time / FP32's on the same device; fidelity: output SQNR)",
           ("--objectives",), "objectives", _objectives, min_items=1, metavar="OBJECTIVE"),
    Option("strategy", "choice", "sweep", "search strategy", ("--strategy",), "strategy.name", _strategies),
    Option("max_candidates", "int", None, "cap the sweep, sampling k evenly", ("--max-candidates",),
           "strategy.max_candidates", minimum=1),
    Option("ranking_method", "choice", "seqto", "sensitivity ranking that orders the search", ("--rank-by",),
           "strategy.ranking", _ranking_methods),
    Option("ranking_images", "int", 16, "calibration images the ranking measures", ("--ranking-images",),
           "strategy.ranking_images", minimum=1),
    Option("max_agreement_drop", "fraction", None,
           "target: at most this fraction of images may change top-1 vs FP32 (e.g. 0.03)",
           ("--max-drop", "--max-agreement-drop"), "strategy.max_agreement_drop"),
    Option("max_top1_drop", "fraction", None, "target: labelled top-1 within this fraction of FP32",
           ("--max-top1-drop",), "strategy.max_top1_drop"),
    Option("min_sqnr_db", "number", None, "target: output SQNR vs FP32 at least this many dB (e.g. 20; "
           "identical outputs measure 200)", ("--min-sqnr-db",), "strategy.min_sqnr_db", maximum=200),
    Option("min_cosine", "fraction", None, "target: mean cosine similarity of the outputs to FP32's at least this",
           ("--min-cosine",), "strategy.min_cosine"),
    Option("min_iou", "fraction", None, "target: mean IoU of thresholded output masks vs FP32's at least this",
           ("--min-iou",), "strategy.min_iou"),
    Option("prefer", "choice", "balanced",
           "what to recommend among candidates faithful enough and not slower than FP32: latency (fastest), "
           "size (smallest) or balanced (lowest size/FP32 + latency ratio)", ("--prefer",), "strategy.prefer",
           _preferences),
    Option("allow_slower", "bool", False,
           "allow recommending a candidate slower than FP32 on its device (never, by default)", ("--allow-slower",),
           "strategy.allow_slower"),
    Option("budget_evals", "int", None, "stop after this many candidate evaluations (default with a target and "
           "bisect/greedy: 3 x log2 of the quantizable nodes per device class, 8 to 40)", ("--budget-evals",),
           "strategy.budget_evals", minimum=1),
    Option("budget_seconds", "number", None, "stop starting new candidates after this many seconds",
           ("--budget-seconds",), "strategy.budget_seconds", maximum=366 * 86400),
    Option("plateau_evals", "int", None,
           "stop a device's search after this many evaluations without a better candidate (default: "
           "max(6, 2 x parallel agents))", ("--plateau",), "strategy.plateau_evals", minimum=1, maximum=100_000),
    Option("probe_recipes", "choices", (),
           "measure these recipes as full INT8 first; each device class searches with its best (when neither this "
           "nor --reduce-range/--no-reduce-range is given: u8s8 u8s8-rr u8s8-bc-prefix2)", ("--probe-recipes",),
           "strategy.probe_recipes", _recipe_probes, metavar="RECIPE"),
    Option("blame_crashes", "bool", True,
           "bisect crashing candidates to the nodes a device cannot run quantized (--no-blame: do not)",
           ("--no-blame",), "strategy.blame_crashes"),
    Option("device_timeout_s", "number", 600.0,
           "with --coordinator: fail if a device class has no agent for this long (seconds)",
           ("--device-timeout",), "device_timeout_s", tune=False, maximum=30 * 86400),
    Option("hub_dir", "text", None,
           "ONNX Model Hub cache for hub:NAME[@OPSET] models (default: onnx.hub's, $ONNX_HOME/hub or "
           "~/.cache/onnx/hub)", ("--hub-dir",), tune=False, metavar="DIR"),
)
BY_NAME: Mapping[str, Option] = {o.name: o for o in OPTIONS}
TUNE_OPTIONS = tuple(o for o in OPTIONS if o.tune)


# -- dataclass fields --------------------------------------------------------------------------
def option_fields(options: Iterable[Option] = OPTIONS):
    """Class decorator (under @dataclass): adds one field per option, with its default, after the
    class's own fields."""
    def add(cls):
        annotations = cls.__dict__.get("__annotations__", {})
        for option in options:
            annotations[option.name] = "Any"
            setattr(cls, option.name, option.default)
        cls.__annotations__ = annotations
        return cls
    return add


def validate(obj: Any, options: Iterable[Option] = OPTIONS) -> None:
    """Check an object's option fields (TuneConfig, CampaignSpec); the first problem is raised,
    named by the option's flag. Values are normalised in place (a frozen dataclass is fine)."""
    for option in options:
        value, problems = option.check(getattr(obj, option.name))
        if problems:
            raise InvalidArgument(f"{option.label} {problems[0]}")
        object.__setattr__(obj, option.name, value)


def values_of(obj: Any, options: Iterable[Option] = OPTIONS) -> dict[str, Any]:
    return {o.name: getattr(obj, o.name) for o in options}


# -- the command line --------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                  options: Iterable[Option] = OPTIONS) -> None:
    for option in options:
        if not option.flags:
            continue
        if option.kind == "bool":
            action = parser.add_argument(*option.flags, dest=option.name, default=option.default,
                                         action="store_false" if option.default else "store_true", help=option.help)
        elif option.kind == "shapes":    # repeatable: one NAME:DIMS per flag
            action = parser.add_argument(*option.flags, dest=option.name, action="append", default=None,
                                         metavar=option.metavar, help=option.help)
        else:
            kind = {"int": int, "number": float, "fraction": float}.get(option.kind, str)   # function: str
            action = parser.add_argument(*option.flags, dest=option.name, type=kind, default=option.default,
                                         nargs="+" if option.kind == "choices" else None, metavar=option.metavar,
                                         help=option.help)
        action.qfarm_option = option            # the help formatter lists its choices and default


def values_from_args(args: argparse.Namespace, options: Iterable[Option] = OPTIONS) -> dict[str, Any]:
    return {o.name: tuple(v) if isinstance(v := getattr(args, o.name), list) else v
            for o in options if o.flags and hasattr(args, o.name)}


class HelpFormatter(argparse.HelpFormatter):
    """Adds each option's choices and default to its help, looked up only when help is shown."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        option = getattr(action, "qfarm_option", None)
        if option is None:
            return text
        if option.choices is not None:
            text += f" (one of: {', '.join(option.allowed())})"
        if option.default not in (None, (), True, False):
            shown = " ".join(map(str, option.default)) if isinstance(option.default, tuple) else option.default
            text += f" (default: {shown})"
        return text.replace("%", "%%")


# -- the campaign spec -------------------------------------------------------------------------
def spec_keys(section: str) -> set[str]:
    """Keys that options take in a spec section ("" = the top level)."""
    return {o.key for o in OPTIONS if o.spec and o.section == section}


def parse_spec_values(raw: Mapping[str, Any], tables: Mapping[str, Mapping[str, Any]],
                      add_error: Callable[[str, str], None]) -> dict[str, Any]:
    """Every option's value from a spec (`tables`: its sections, already checked to be tables);
    each problem is reported as add_error("section.key", message) and the default is used."""
    values = {}
    for option in OPTIONS:
        source = raw if not option.section else tables.get(option.section, {})
        value, problems = option.check(source.get(option.key))
        for problem in problems:
            add_error(option.spec, problem)
        values[option.name] = value
    return values


def spec_sections(values: Mapping[str, Any], options: Iterable[Option] = OPTIONS) -> dict[str, dict[str, Any]]:
    """{section: {key: value}} as a spec (or its wire JSON) holds them; "" is the top level."""
    out: dict[str, dict[str, Any]] = {}
    for option in options:
        if option.spec and option.name in values:
            value = values[option.name]
            out.setdefault(option.section, {})[option.key] = list(value) if isinstance(value, tuple) else value
    return out
