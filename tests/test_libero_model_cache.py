"""The compiled-scene cache (libero_model_cache.py): a model loaded from it equals the compiled one, array for array
and step for step, for a small scene and for every LIBERO scene class; its key follows the files the scene names;
it keeps to its budget, replaces an unreadable file, never waits for another writer; robosuite builds its sims from
it only inside `scene_models_from`; and LIBERO env workers in real processes, two starting together on an empty
cache, write a scene once, and a worker that loads it plays the same episode as a worker that compiles."""

from __future__ import annotations

import fcntl
import os

import numpy as np
import pytest

from pi0.ript.env.libero_model_cache import SceneModelCache, scene_key, scene_models_from

mujoco = pytest.importorskip("mujoco")

TETRAHEDRON = "v 0 0 0\nv 0.1 0 0\nv 0 0.1 0\nv 0 0 0.1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n"


def _scene(mesh_file: str, height: float = 0.5) -> str:
    return f"""<mujoco>
  <asset><mesh name="tet" file="{mesh_file}"/></asset>
  <worldbody>
    <geom type="plane" size="2 2 0.1"/>
    <body pos="0 0 {height}"><freejoint/><geom type="mesh" mesh="tet"/></body>
    <body pos="0.5 0 0.3"><joint type="hinge" axis="0 1 0"/><geom type="capsule" size="0.03" fromto="0 0 0 0.2 0 0"/></body>
  </worldbody>
</mujoco>"""


@pytest.fixture
def mesh(tmp_path):
    path = tmp_path / "tet.obj"
    path.write_text(TETRAHEDRON)
    return path


def _arrays(model) -> dict[str, np.ndarray]:
    out = {}
    for name in dir(model):
        if name.startswith("_"):
            continue
        try:
            value = getattr(model, name)
        except Exception:  # noqa: BLE001 - some properties are not readable on every model
            continue
        if isinstance(value, np.ndarray):
            out[name] = value
    return out


def _rollout(model, steps: int = 300) -> np.ndarray:
    data = mujoco.MjData(model)
    for _ in range(steps):
        mujoco.mj_step(model, data)
    return np.concatenate([data.qpos, data.qvel, data.sensordata])


def test_a_second_cache_loads_what_the_first_compiled_and_the_model_is_the_same(tmp_path, mesh):
    xml = _scene(str(mesh))
    first = SceneModelCache(tmp_path / "cache", max_bytes=2**30)
    compiled = first.model(xml)
    assert first.counts() == {"loaded": 0, "compiled": 1, "written": 1}
    assert len(list((tmp_path / "cache").glob("*.mjb"))) == 1

    second = SceneModelCache(tmp_path / "cache", max_bytes=2**30)
    loaded = second.model(xml)
    assert second.counts() == {"loaded": 1, "compiled": 0, "written": 0}
    a, b = _arrays(compiled), _arrays(loaded)
    assert a.keys() == b.keys() and len(a) > 50
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(_rollout(compiled), _rollout(loaded))


def test_the_key_follows_the_files_the_scene_names(tmp_path, mesh, monkeypatch):
    xml = _scene(str(mesh))
    key = scene_key(xml, mujoco.__version__)
    assert key is not None and key == scene_key(xml, mujoco.__version__)
    assert scene_key(xml, "0.0.0") != key  # another MuJoCo compiles its own
    assert scene_key(_scene(str(mesh), height=0.6), mujoco.__version__) != key
    mesh.write_text(TETRAHEDRON.replace("0.1 0 0\n", "0.2 0 0\n"))  # same path, another mesh
    assert scene_key(xml, mujoco.__version__) != key
    assert scene_key(_scene(str(tmp_path / "missing.obj")), mujoco.__version__) is None
    assert scene_key(_scene("tet.obj"), mujoco.__version__) is None  # relative: where it resolves is not in the key

    cache = SceneModelCache(tmp_path / "cache", max_bytes=2**30)
    monkeypatch.chdir(tmp_path)
    cache.model(_scene("tet.obj"))  # compiles (MuJoCo resolves it from the working directory), writes nothing
    assert cache.counts() == {"loaded": 0, "compiled": 1, "written": 0}


def test_the_least_recently_used_scene_goes_when_the_budget_is_spent(tmp_path, mesh):
    cache_dir = tmp_path / "cache"
    probe = SceneModelCache(cache_dir, max_bytes=2**30)
    probe.model(_scene(str(mesh), 0.5))
    (size,) = [p.stat().st_size for p in cache_dir.glob("*.mjb")]

    cache = SceneModelCache(cache_dir, max_bytes=int(2.5 * size))
    old = cache_dir / f"{scene_key(_scene(str(mesh), 0.5), mujoco.__version__)}.mjb"
    os.utime(old, ns=(1, 1))  # long unused
    cache.model(_scene(str(mesh), 0.6))
    cache.model(_scene(str(mesh), 0.7))  # a third would pass 2.5 files' worth: the oldest goes
    names = {p.name for p in cache_dir.glob("*.mjb")}
    assert len(names) == 2 and old.name not in names

    tiny = SceneModelCache(tmp_path / "tiny", max_bytes=1)  # not even one model fits
    tiny.model(_scene(str(mesh)))
    assert tiny.counts()["written"] == 0 and not list((tmp_path / "tiny").glob("*.mjb"))


def test_an_unreadable_file_is_compiled_over(tmp_path, mesh, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo logs the bad header to MUJOCO_LOG.TXT in the working directory
    xml = _scene(str(mesh))
    cache = SceneModelCache(tmp_path, max_bytes=2**30)
    path = tmp_path / f"{scene_key(xml, mujoco.__version__)}.mjb"
    path.write_bytes(b"not a model")
    model = cache.model(xml)
    assert cache.counts() == {"loaded": 0, "compiled": 1, "written": 1}
    assert mujoco.MjModel.from_binary_path(str(path)).nbody == model.nbody


def test_a_writer_holding_the_lock_is_not_waited_for(tmp_path, mesh):
    xml = _scene(str(mesh))
    cache = SceneModelCache(tmp_path, max_bytes=2**30)
    with open(tmp_path / f"{scene_key(xml, mujoco.__version__)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process writing this scene
        cache.model(xml)
    assert cache.counts() == {"loaded": 0, "compiled": 1, "written": 0}
    assert not list(tmp_path.glob("*.mjb")) and not list(tmp_path.glob("*.tmp"))


def test_robosuite_builds_its_sims_from_the_cache_inside_the_block_only(tmp_path, mesh):
    binding_utils = pytest.importorskip("robosuite.utils.binding_utils")
    xml = _scene(str(mesh))
    original = binding_utils.MjSim.__dict__["from_xml_string"]
    cache = SceneModelCache(tmp_path, max_bytes=2**30)
    with scene_models_from(cache):
        binding_utils.MjSim.from_xml_string(xml)
        sim = binding_utils.MjSim.from_xml_string(xml)
    assert cache.counts() == {"loaded": 1, "compiled": 1, "written": 1}
    assert isinstance(sim, binding_utils.MjSim) and sim.model.nbody == 3
    assert binding_utils.MjSim.__dict__["from_xml_string"] is original
    binding_utils.MjSim.from_xml_string(xml)
    assert cache.counts()["loaded"] == 1


class _SceneXML(Exception):
    """Raised in place of robosuite's compile to carry the scene XML out of an env constructor."""


def _scene_xml(suite: str, task_id: int) -> str:
    """The XML a LIBERO task's env would compile: the constructor runs up to the compile, then stops."""
    binding_utils = pytest.importorskip("robosuite.utils.binding_utils")
    from pi0.ript.env.libero_sim import LiberoEnvSpec, _import_libero

    def stop(cls, xml):
        raise _SceneXML(xml)

    original = binding_utils.MjSim.__dict__["from_xml_string"]
    binding_utils.MjSim.from_xml_string = classmethod(stop)
    try:
        _import_libero()[2](bddl_file_name=LiberoEnvSpec(suite).bddl_file(task_id), camera_heights=32, camera_widths=32)
    except _SceneXML as scene:
        return scene.args[0]
    finally:
        binding_utils.MjSim.from_xml_string = original
    raise AssertionError(f"{suite} task {task_id}: the env never compiled a scene")


# One task per LIBERO problem class the shipped suites use (as tests/test_libero_sim.py).
SCENE_CLASSES = [("libero_spatial", 4), ("libero_goal", 5), ("libero_object", 0), ("libero_10", 3), ("libero_10", 0),
                 ("libero_10", 5)]


@pytest.mark.libero
@pytest.mark.parametrize("suite, task_id", SCENE_CLASSES, ids=[f"{s}-{t}" for s, t in SCENE_CLASSES])
def test_every_scene_class_loads_the_model_it_compiled(tmp_path, monkeypatch, suite, task_id):
    """Model arrays and a rollout, compiled against loaded, for each scene class (episodes for libero_spatial below)."""
    monkeypatch.chdir(tmp_path)
    xml = _scene_xml(suite, task_id)
    assert scene_key(xml, mujoco.__version__) is not None  # LIBERO names its assets by absolute paths: cacheable
    compiled = SceneModelCache(tmp_path, max_bytes=2**33).model(xml)
    reader = SceneModelCache(tmp_path, max_bytes=2**33)
    loaded = reader.model(xml)
    assert reader.counts() == {"loaded": 1, "compiled": 0, "written": 0}
    a, b = _arrays(compiled), _arrays(loaded)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(_rollout(compiled, 100), _rollout(loaded, 100))


def _episode(worker, steps: int = 4):
    reset = worker.call("reset", {"task_id": 0, "init_state": 0}, timeout=300)
    actions = np.random.default_rng(3).uniform(-1, 1, size=(steps, 7))
    results = worker.call("steps", [(a, True) for a in actions], timeout=300)
    return reset, [reset.observation] + [r.observation for r in results]


@pytest.mark.libero
@pytest.mark.timeout(600)
def test_workers_write_a_scene_once_load_it_and_play_the_same_episode(tmp_path, no_orphans):
    from pi0.ript.env.libero_sim import LiberoEnvSpec
    from pi0.ript.env.worker import EnvWorker

    spec = lambda gb: LiberoEnvSpec("libero_spatial", image_size=32, num_wait_steps=2, model_cache_gb=gb,  # noqa: E731
                                    model_cache_dir=str(tmp_path))
    # Two workers start on the empty cache together: both compile, exactly one writes the file.
    writers = [EnvWorker(0, spec(8.0)), EnvWorker(1, spec(8.0))]
    try:
        for worker in writers:
            worker.wait_started(300)
        for worker in writers:
            worker.send("reset", {"task_id": 0, "init_state": 0})
        resets = [worker.receive() for worker in writers]
    finally:
        for worker in writers:
            worker.close()
    assert [r.info["scene_models"]["compiled"] for r in resets] == [1, 1]
    assert sum(r.info["scene_models"]["written"] for r in resets) == 1
    assert len(list(tmp_path.glob("*.mjb"))) == 1 and not list(tmp_path.glob("*.tmp"))

    reader, plain = EnvWorker(2, spec(8.0)), EnvWorker(3, spec(0))
    try:
        (reset, loaded), (plain_reset, compiled) = _episode(reader), _episode(plain)
    finally:
        reader.close()
        plain.close()
    assert reset.info["scene_models"] == {"loaded": 1, "compiled": 0, "written": 0}
    assert plain_reset.info["scene_models"] == {"loaded": 0, "compiled": 1, "written": 0}
    for a, b in zip(loaded, compiled):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
