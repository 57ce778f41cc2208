"""Control policies: environments vs the runtime, rewards, PPO, export, Controller.step(control=...)."""
import json
import shutil

import numpy as np
import pytest
import torch

from runtime.control import Paths, joystick_features, resample_path, target_features
from runtime.controller import Controller
from runtime.model import ModelError, load_model, sha256_file
from trainer.config import TrainConfig
from trainer.data import load_frames
from trainer.export import untrained_run
from trainer.policy.__main__ import main as policy_main
from trainer.motion_metrics import frame_quantities
from trainer.policy.export import export_policy, load_exported
from trainer.policy.loop import RunConfig, make_trainer, read, restore, train
from trainer.policy.ppo import ActorCritic, PolicyGraph, PPOConfig, gae, ppo_update
from trainer.policy.stepper import OnnxStepper, TorchStepper
from trainer.policy.tasks import ControlEnv, TaskConfig
from trainer.step_graph import StepGraph

CPU = torch.device("cpu")
FIGURE_EIGHT = np.stack([3 * np.sin(np.linspace(0, 2 * np.pi, 60, endpoint=False)),
                         2 * np.sin(np.linspace(0, 4 * np.pi, 60, endpoint=False))], -1)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def policy_model(model_dir, tmp_path_factory):
    """A copy of the tiny model with an untrained policy for each task."""
    out = tmp_path_factory.mktemp("policy") / "tiny"
    shutil.copytree(model_dir, out)
    stepper = OnnxStepper(load_model(out), CPU)
    torch.manual_seed(0)
    for task in ("joystick", "target", "path"):
        env = ControlEnv(task, stepper, 2)
        net = ActorCritic(env.obs_size, env.action_size, PPOConfig(hidden=32, init_log_std=0.0))
        for p in net.actor.parameters():  # visible actions: the default last layer is nearly silent
            torch.nn.init.normal_(p, 0.0, 0.3)
        export_policy(net, out, task, env.blocks, env.config.runtime(task), {"frames": 0})
    return out


def place_both(ctrl: Controller, env: ControlEnv, starts, yaws, origins) -> None:
    for i, (s, y, o) in enumerate(zip(starts, yaws, origins)):
        ctrl.reset([i], start=s, origin=np.asarray(o, np.float32), yaw=y)
    env.chars.place(np.arange(len(starts)), np.asarray(starts), np.asarray(origins, np.float32), np.asarray(yaws))


@pytest.mark.parametrize("kind", ["onnx", "torch"])
def test_environment_moves_characters_exactly_like_the_runtime(model_dir, frames_path, kind):
    model = load_model(model_dir)
    if kind == "onnx":
        stepper = OnnxStepper(model, CPU)
    else:  # the conftest model is this untrained run, rebuilt from the same seed
        stepper = TorchStepper.from_run(model, CPU, untrained_run(load_frames(frames_path), TrainConfig(hidden=64),
                                                                  seed=1))
    env = ControlEnv("joystick", stepper, 3)
    ctrl = Controller(model, 3, seed=0)
    place_both(ctrl, env, [0, 1, 2], [0.0, 1.0, -2.5], [[0, 0, 0], [2, 0, 1], [-3, 0, 4]])
    rng = np.random.default_rng(0)
    for _ in range(60):
        z = rng.standard_normal((3, model.latent_size)).astype(np.float32)
        ctrl.step(latents=z)
        env.chars.step(torch.from_numpy(z))
    origin, yaw = env.chars.ground()
    assert np.abs(origin - ctrl.state.origin).max() < 1e-4
    assert np.abs(yaw - ctrl.state.yaw[:, 0]).max() < 1e-4
    assert np.abs(ctrl.state.origin[:, [0, 2]] - [[0, 0], [2, 1], [-3, 4]]).max() > 0.1  # they did walk


def test_task_features_are_in_the_character_frame():
    yaw = np.array([0.0, np.pi / 2])  # facing +Z, then facing +X
    j = joystick_features(np.array([[0.0, 2.0], [3.0, 0.0]]), np.array([1.0, 2.0]), yaw)
    assert np.allclose(j["direction"], [[0, 1], [0, 1]], atol=1e-12) and np.allclose(j["speed"][:, 0], [1, 2])
    t = target_features(np.array([[1.0, 0.0], [5.0, 1.0]]), np.array([[0.0, 0, 0], [2.0, 0, 1.0]]), yaw)
    assert np.allclose(t["target"], [[1, 0], [0, 3]], atol=1e-12)  # right of, then ahead of the character


def test_paths_track_progress_and_look_ahead():
    paths = Paths(1)
    square = resample_path(np.array([[0.0, 0], [4, 0], [4, 4], [0, 4]]), closed=True)
    assert paths.set(np.array([0]), [square], np.array([True]), np.array([[1.0, 0.1]]))[0] == pytest.approx(0.1)
    assert abs(paths.length(np.array([0]))[0] - 16.0) < 1e-9 and abs(paths.s[0] - 1.0) < 0.06
    advanced, dist = paths.track(np.array([0]), np.array([[1.5, -0.2]]))
    assert abs(advanced[0] - 0.5) < 0.06 and abs(dist[0] - 0.2) < 1e-6
    ahead = paths.features(np.array([0]), np.array([np.pi / 2]), np.array([[1.5, 0.0]]), 0.5)["lookahead"]
    assert np.allclose(ahead.reshape(4, 2), [[0, 0.5], [0, 1.0], [0, 1.5], [0, 2.0]], atol=0.06)


def test_rewards_prefer_doing_the_task(model_dir):
    env = ControlEnv("joystick", OnnxStepper(load_model(model_dir), CPU), 2)
    env.reset()
    task, fps = env.task, env.chars.fps
    task.direction[:] = [[0, 1], [0, -1]]  # the same motion; the second is told to go the other way
    task.speed[:] = 1.0
    raw = np.zeros((2, env.chars.frame_size))
    raw[:, 1] = 1.0 / fps  # 1 m/s forward
    r = task.reward(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2), raw)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(np.exp(-2.0))
    task.direction[:] = [[np.sin(0.75 * np.pi), np.cos(0.75 * np.pi)], [np.sin(-0.75 * np.pi), np.cos(-0.75 * np.pi)]]
    r = task.reward(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2), raw)  # 135 degrees off either way: linear
    assert r == pytest.approx(np.exp([-1.5, -1.5]))
    task.direction[:] = [[0, 1], [0, 1]]
    task.speed[:] = [2.0, 0.5]  # 1 m/s walked: 1 m/s too slow costs 1 at 2 m/s, 0.5 m/s too fast 1 at 0.5 m/s
    r = task.reward(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2), raw)
    assert r == pytest.approx(np.exp([-1.0, -1.0]))

    env = ControlEnv("target", OnnxStepper(load_model(model_dir), CPU), 3, TaskConfig(target_hold=0.0))
    env.reset()
    task = env.task
    task.target[:] = [[0, 5], [0, -5], [0, 0.15]]
    before = np.zeros((3, 3))
    after = np.array([[0, 0, 0.1]] * 3)
    r = task.reward(before, after, np.zeros(3), np.zeros((3, env.chars.frame_size)))
    assert r[0] > 2.5 and r[1] < -2.5 and r[2] > env.config.target_bonus  # toward, away, arrived
    assert task.reached.tolist() == [0, 0, 1] and np.linalg.norm(task.target[2] - [0, 0.1]) >= 1.0
    task.target[:] = [[0, 5], [0, -5], [0, 5]]
    env.chars.skating[:] = [0.5, 0.5, 0.0]  # skating discounts progress, not walking away
    skated = task.reward(before, after, np.zeros(3), np.zeros((3, env.chars.frame_size)))
    assert skated[0] == pytest.approx(skated[2] * np.exp(-0.5 * env.config.skate_weight)) and skated[1] < -2.5
    env.chars.skating[:] = 0.0  # the same step toward the target facing it, side-on, and backing onto it
    task.target[:] = [0, 5]
    facing = task.reward(before, after, np.array([0.0, np.pi / 2, np.pi]), np.zeros((3, env.chars.frame_size)))
    assert facing[1:] == pytest.approx(facing[0] * np.exp([-1.0, -2.0]))

    env = ControlEnv("path", OnnxStepper(load_model(model_dir), CPU), 3)
    env.reset()
    line = resample_path(np.array([[0.0, -5], [0, 5], [0.1, 5], [0.1, -5]]), closed=True)
    start = np.array([[0.0, 0], [0, 0], [3, 0]])
    env.task.follow(np.arange(3), [line] * 3, start)
    after = np.array([[0, 0, 0.05], [0, 0, -0.05], [3, 0, 0.05]])
    r = env.task.reward(np.zeros((3, 3)), after, np.zeros(3), None)
    assert r[0] > 0.9 and r[1] < -0.9 and abs(r[2]) < 0.01  # along, backwards, far off the path
    # Off the path, closing in earns what leaving costs, so a lost character learns to come back.
    env.task.follow(np.arange(3), [line] * 3, start)
    closer, back = np.array([[0, 0, 0], [0, 0, 0], [2.9, 0, 0]]), np.array([[0, 0, 0], [0, 0, 0], [3, 0, 0]])
    steps = [env.task.reward(np.zeros((3, 3)), closer, np.zeros(3), None),
             env.task.reward(np.zeros((3, 3)), back, np.zeros(3), None)]
    toward = 0.1 * env.chars.fps / env.config.path_pace_mps
    assert steps[0][2] == pytest.approx(toward, rel=0.05) and steps[1][2] == pytest.approx(-toward, rel=0.05)


def test_a_held_target_pays_for_standing_on_it(model_dir):
    """After an arrival the target may stay put: standing on it pays, stepping off costs, then a new one comes."""
    env = ControlEnv("target", OnnxStepper(load_model(model_dir), CPU), 2, TaskConfig(target_hold=1.0), seed=1)
    env.reset()
    task, frame = env.task, np.zeros((2, env.chars.frame_size))
    task.target[:] = [[0, 0.1], [0, 0.1]]
    still, off = np.zeros((2, 3)), np.array([[0, 0, 0], [0, 0, -0.05]])
    r = task.reward(still, still, np.zeros(2), frame)
    assert r == pytest.approx([env.config.target_bonus] * 2) and task.target[:, 1] == pytest.approx([0.1, 0.1])
    lo, hi = np.round(np.array(env.config.target_hold_s) * env.chars.fps)
    assert np.all((task.hold >= lo) & (task.hold <= hi)) and task.reached.tolist() == [1, 1]
    r = task.reward(still, off, np.zeros(2), frame)  # one stays on the mark, the other steps 5 cm off it
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(1.0 - 0.05 * env.chars.fps)
    task.hold[:] = 1
    task.reward(off, off, np.zeros(2), frame)  # the last held step: no second bonus, then new targets
    assert task.reached.tolist() == [1, 1] and np.all(np.linalg.norm(task.target - off[:, [0, 2]], axis=1) >= 1.0)


def test_half_turn_commands_turn_away_from_where_each_character_faces(model_dir):
    from trainer.policy.tasks import heading_error

    n = 2000
    yaw = np.random.default_rng(3).uniform(-np.pi, np.pi, n)
    errors = {}
    for share in (0.0, 0.5, 1.0):
        env = ControlEnv("joystick", OnnxStepper(load_model(model_dir), CPU), n, TaskConfig(half_turns=share))
        env.task.reset(np.arange(n), np.zeros((n, 3)), yaw)
        errors[share] = heading_error(yaw, env.task.direction)
    assert np.all(errors[1.0] >= 0.75 * np.pi - 1e-9)
    half = {share: float((e >= 0.75 * np.pi).mean()) for share, e in errors.items()}
    assert half[0.0] == pytest.approx(0.25, abs=0.03) and half[0.5] == pytest.approx(0.625, abs=0.04)


def test_skating_penalty_is_the_evaluators_foot_sliding(model_dir):
    """The reward pays weight x (planted x horizontal foot speed), measured as trainer.evaluate measures it."""
    model = load_model(model_dir)
    stepper = OnnxStepper(model, CPU)
    envs = [ControlEnv("joystick", stepper, 4, TaskConfig(skate_weight=w), seed=3) for w in (0.0, 2.5)]
    for env in envs:
        env.reset()
    rng = np.random.default_rng(0)
    frames = [envs[0].chars.raw_frame()]
    skating = []
    for t in range(6):
        z = torch.from_numpy(rng.standard_normal((4, model.latent_size)).astype(np.float32) * 2)
        (_, free, *_), (_, paid, *_) = (env.step(z) for env in envs)
        frames.append(envs[0].chars.raw_frame())
        assert np.allclose(envs[0].chars.skating, envs[1].chars.skating)
        assert np.allclose(free - paid, 2.5 * envs[0].chars.skating, atol=1e-5)
        skating.append(envs[0].chars.skating.copy())
    assert np.all(skating[0] == 0.0)  # a character's first step has no previous feet to slide from
    q = frame_quantities(np.stack(frames[1:-1]), np.stack(frames[2:]), model.layout, model.fps)
    planted = np.clip(np.stack(frames[2:])[..., model.layout.slice("contacts")], 0.0, 1.0)
    want = (planted * q["skate"]).mean(-1)  # frames[1] -> frames[2] is the second step, and so on
    assert np.abs(np.stack(skating[1:]) - want).max() < 1e-3 and want.max() > 0.01


def test_a_policy_is_read_back_from_its_onnx_file_to_train_further(policy_model, tmp_path):
    model = load_model(policy_model)
    env = ControlEnv("target", OnnxStepper(model, CPU), 2)
    net = ActorCritic(env.obs_size, env.action_size, PPOConfig(hidden=32))
    load_exported(net, policy_model / "policy-target.onnx")
    obs = np.random.default_rng(1).standard_normal((5, env.obs_size)).astype(np.float32)
    want = model.policies["target"].session.run(None, {"observation": obs})[0]
    with torch.no_grad():
        assert np.abs(PolicyGraph(net)(torch.from_numpy(obs)).numpy() - want).max() < 1e-4
    wider = ActorCritic(env.obs_size, env.action_size, PPOConfig(hidden=48))
    with pytest.raises(ValueError, match="do not fit the task's observation"):
        load_exported(wider, policy_model / "policy-target.onnx")
    with pytest.raises(ValueError, match="not a policy exported by trainer.policy"):
        load_exported(net, policy_model / "decoder.onnx")
    with pytest.raises(ValueError, match="no such policy file"):
        load_exported(net, tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.onnx: not an ONNX file"):
        load_exported(net, tmp_path / "junk.onnx")


def test_critic_warmup_leaves_the_actor_alone():
    torch.manual_seed(0)
    config = PPOConfig(hidden=16, epochs=2, minibatch=32)
    net = ActorCritic(6, 2, config)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    batch = {"obs": torch.randn(64, 6), "actions": torch.randn(64, 2), "logp": torch.zeros(64),
             "adv": torch.randn(64), "returns": torch.randn(64)}
    actor = [p.detach().clone() for p in [*net.actor.parameters(), net.log_std]]
    critic = [p.detach().clone() for p in net.critic.parameters()]
    ppo_update(net, optimiser, batch, config, torch.Generator().manual_seed(0), train_actor=False)
    assert all(torch.equal(a, p) for a, p in zip(actor, [*net.actor.parameters(), net.log_std]))
    assert not all(torch.equal(c, p) for c, p in zip(critic, net.critic.parameters()))
    ppo_update(net, optimiser, batch, config, torch.Generator().manual_seed(0))
    assert not all(torch.equal(a, p) for a, p in zip(actor, net.actor.parameters()))


def test_gae_cuts_at_episode_ends_and_bootstraps_the_tail():
    rewards = torch.tensor([[1.0], [1.0], [1.0]])
    values = torch.zeros(3, 1)
    dones = torch.tensor([[False], [True], [False]])
    adv, ret = gae(rewards, values, dones, torch.tensor([10.0]), gamma=0.5, lam=1.0)
    assert ret[:, 0].tolist() == pytest.approx([1.5, 1.0, 6.0])


class SteerableDecoder(torch.nn.Module):
    """A toy decoder whose character walks at 1 m/s and turns at a rate set by z[0]: a task PPO learns fast."""

    def __init__(self, model) -> None:
        super().__init__()
        raw = model.start_frames[0, -1].astype(np.float64)
        self.register_buffer("frame", torch.as_tensor(model.normalise(raw), dtype=torch.float32))
        self.fps = model.fps
        self.register_buffer("root_shift", torch.as_tensor(model.shift[:3]))
        self.register_buffer("root_scale", torch.as_tensor(model.scale[:3]))

    def forward(self, z, condition):
        root = torch.stack([torch.zeros_like(z[:, 0]), torch.full_like(z[:, 0], 1.0 / self.fps), 0.1 * z[:, 0]], 1)
        out = self.frame.expand(len(z), -1).clone()
        out[:, :3] = (root - self.root_shift) / self.root_scale
        return out


def test_ppo_improves_the_reward_of_a_tiny_task(model_dir, tmp_path):
    model = load_model(model_dir)
    stepper = TorchStepper(model, CPU, StepGraph(SteerableDecoder(model), model.shift, model.scale, model.bounds,
                                                 model.layout, model.skeleton))
    config = RunConfig("joystick", steps=8 * 32 * 32, seed=0, checkpoint_every_s=1e9,
                       ppo=PPOConfig(envs=32, horizon=32, minibatch=256, epochs=4, hidden=64, lr=1e-3, lr_end=1e-3),
                       env=TaskConfig(speed_min=1.0, speed_max=1.0, command_min_s=100, command_max_s=100))

    def score(trainer) -> float:  # the deterministic policy on the same commands and starts
        env = ControlEnv("joystick", stepper, 64, config.env, seed=123)
        graph = PolicyGraph(trainer.net).eval()
        obs, total = env.reset(), 0.0
        with torch.no_grad():
            for _ in range(60):
                obs, r, *_ = env.step(graph(obs))
                total += float(r.mean())
        return total / 60

    trainer = make_trainer(config, stepper)
    before = score(trainer)
    train(trainer, tmp_path, progress=False)
    after = score(trainer)
    assert after > before + 0.2, (before, after)
    assert (tmp_path / "policy.pt").is_file() and (tmp_path / "reward.png").is_file()


def test_exported_policy_matches_torch_and_validates(policy_model, tmp_path):
    model = load_model(policy_model)
    assert sorted(model.policies) == ["joystick", "path", "target"]
    spec = model.policies["target"].spec
    assert spec["observation"]["blocks"][-1] == ["target", model.frame_size, model.frame_size + 2]
    assert spec["action"]["scale"] == 4.0
    bad = tmp_path / "bad"
    shutil.copytree(policy_model, bad)
    (bad / "policy-target.onnx").write_bytes(b"broken")
    with pytest.raises(ModelError, match="policy-target.onnx: sha256 does not match"):
        load_model(bad)


def test_runtime_policy_sees_what_training_saw(policy_model):
    """The runtime's observation and policy give the latents the trainer's environment would."""
    model = load_model(policy_model)
    stepper = OnnxStepper(model, CPU)
    for task, control in (("joystick", {"direction": [[1.0, 1.0], [0.0, -2.0]], "speed": [0.5, 1.5]}),
                          ("target", {"target": [[3.0, 4.0], [-2.0, 1.0]]}),
                          ("path", {"path": FIGURE_EIGHT})):
        env = ControlEnv(task, stepper, 2)
        env.reset()
        ctrl = Controller(model, 2, seed=0)
        place_both(ctrl, env, [0, 1], [0.3, -2.0], [[0.5, 0, 0.2], [1.0, 0, -0.5]])
        if task == "joystick":
            env.task.direction[:], env.task.speed[:] = control["direction"], control["speed"]
        elif task == "target":
            env.task.target[:] = control["target"]
        else:
            env.task.paths.set(np.arange(2), [resample_path(FIGURE_EIGHT, True)] * 2, np.ones(2, bool),
                               env.chars.ground()[0][:, [0, 2]])
        session = model.policies[task].session
        want = session.run(None, {"observation": env.observe().numpy()})[0]
        got = ctrl._policy_latents({"task": task, **control}, None)
        assert np.abs(got - want).max() < 1e-5, task


def test_controller_steers_some_characters_and_leaves_the_rest(policy_model):
    model = load_model(policy_model)
    n = 5
    control = {"task": ["joystick", "", "target", "none", "path"], "direction": [[1.0, 0.0]] * n,
               "speed": 1.0, "target": [[0.0, 0.0], [0, 0], [4.0, 4.0], [0, 0], [0, 0]], "path": FIGURE_EIGHT}
    rng = np.random.default_rng(1)
    mixed, free = Controller(model, n, seed=2), Controller(model, n, seed=2)
    alone = Controller(model, 1, seed=2)
    alone.reset(start=0, origin=mixed.state.origin[2], yaw=0.0)
    mixed.reset([2], start=0, origin=mixed.state.origin[2], yaw=0.0)
    free.reset([2], start=0, origin=free.state.origin[2], yaw=0.0)
    for _ in range(20):
        z = rng.standard_normal((n, model.latent_size)).astype(np.float32)
        a = mixed.step(latents=z, control=control).copy()
        b = free.step(latents=z).copy()
        c = alone.step(control={"task": "target", "target": [4.0, 4.0]}).copy()
    assert np.array_equal(a.root_position[[1, 3]], b.root_position[[1, 3]])  # free characters: their latents
    assert not np.allclose(a.root_position[[0, 2, 4]], b.root_position[[0, 2, 4]])
    assert np.abs(a.root_position[2] - c.root_position[0]).max() < 1e-5  # batched = one by one
    mixed.step(control={"task": "joystick", "direction": [0.0, 1.0], "speed": 1.0})  # random latents elsewhere


@pytest.mark.parametrize("control,message", [
    ("joystick", "control must be a dict"),
    ({"direction": [1, 0]}, "needs a 'task'"),
    ({"task": "fly"}, "unknown control task 'fly'"),
    ({"task": ["joystick"] * 2}, "must be one task or 3 of them"),
    ({"task": "joystick", "speed": 1.0}, "no 'direction'"),
    ({"task": "joystick", "direction": [0, 0], "speed": 1.0}, "non-zero"),
    ({"task": "joystick", "direction": [[1, 0]] * 2, "speed": 1.0}, r"shape \(2,\) or \(3, 2\)"),
    ({"task": "joystick", "direction": [1, 0], "speed": -1.0}, "at least 0 m/s"),
    ({"task": "target", "target": [np.nan, 0]}, "must be finite"),
    ({"task": "path"}, "no 'path'"),
    ({"task": "path", "path": [[0, 0]]}, "at least 2 points"),
    ({"task": "path", "path": [FIGURE_EIGHT, None, FIGURE_EIGHT]}, "character 1: no path given"),
    ({"task": "joystick", "direction": [1, 0], "speed": 1, "jump": True}, "unknown control field"),
])
def test_bad_control_is_a_clear_value_error(policy_model, control, message):
    ctrl = Controller(load_model(policy_model), 3, seed=0)
    with pytest.raises(ValueError, match=message):
        ctrl.step(control=control)


def test_model_without_policies_refuses_control(model_dir):
    with pytest.raises(ValueError, match="has no joystick policy"):
        Controller(load_model(model_dir), 1).step(control={"task": "joystick", "direction": [0, 1], "speed": 1})


def test_command_line_trains_resumes_and_exports(model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    run = tmp_path / "run"
    args = ["target", "--model", str(model), "--run-dir", str(run), "--envs", "8", "--horizon", "16", "-q"]
    assert policy_main(args + ["--steps", "128"]) == 0
    assert policy_main(args + ["--steps", "128"]) == 2  # refuses to overwrite a run
    assert "pass --resume" in capsys.readouterr().err
    assert policy_main(args + ["--steps", "256", "--resume"]) == 0
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("update,frames")
    meta = json.loads((model / "model.json").read_text())
    assert meta["policies"]["target"]["training"]["frames"] == 256
    assert "target" in load_model(model).policies
    assert policy_main(["joystick", "--model", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "r2")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    warm = ["target", "--model", str(model), "--run-dir", str(tmp_path / "warm"), "--envs", "8", "--horizon", "16",
            "-q", "--steps", "128"]
    started_from = sha256_file(model / "policy-target.onnx")
    assert policy_main(warm + ["--init-policy", str(model / "policy-target.onnx")]) == 0
    # The warm start's record names the policy it started from, with that policy's own record, across --resume.
    assert policy_main(warm + ["--steps", "256", "--resume"]) == 0
    record = json.loads((model / "model.json").read_text())["policies"]["target"]["training"]
    assert record["frames"] == 256 and record["init"]["sha256"] == started_from
    assert record["init"]["training"]["frames"] == 256 and record["init"]["training"]["init"] is None
    assert record["reward"]["target_facing"] == 1.0
    capsys.readouterr()
    warm[warm.index(str(tmp_path / "warm"))] = str(tmp_path / "warm2")
    assert policy_main(warm + ["--no-export", "--init-policy", str(model / "model.json")]) == 2
    assert "model.json: not an ONNX file" in capsys.readouterr().err


def test_a_resumed_run_keeps_the_reward_it_was_trained_on(model_dir, tmp_path):
    run = tmp_path / "run"
    args = ["joystick", "--model", str(model_dir), "--run-dir", str(run), "--envs", "8", "--horizon", "16", "-q",
            "--no-export", "--steps", "128", "--heading", "cosine", "--path-approach", "0.5", "--half-turns", "0.3"]
    assert policy_main(args) == 0
    state = read(run)
    stepper = OnnxStepper(load_model(model_dir), CPU)
    config = restore(state, stepper).env.config
    assert not config.heading_linear and config.path_approach == 0.5 and config.skate_weight == 1.0
    assert config.target_facing == 1.0 and config.target_hold == 0.5 and config.speed_relative_below == 1.0
    assert config.half_turns == 0.3
    for key in ("heading_linear", "path_approach", "skate_weight", "target_facing", "target_hold", "target_hold_s",
                "speed_relative_below", "half_turns"):
        del state["env"][key]  # a run from before these terms
    config = restore(state, stepper).env.config
    assert not config.heading_linear and config.path_approach == 0.0 and config.skate_weight == 0.0
    assert config.target_facing == 0.0 and config.target_hold == 0.0 and config.speed_relative_below == 0.0
    assert config.half_turns == 0.0


def test_bake_follows_a_control_file(policy_model, model_dir, tmp_path, capsys):
    from runtime.bake import main as bake_main

    joystick = tmp_path / "joystick.json"
    joystick.write_text(json.dumps([[0, 0, 1, 1.0], [1.0, 1, 0, 1.5]]))
    path = tmp_path / "path.json"
    path.write_text(json.dumps({"task": "path", "points": FIGURE_EIGHT.tolist(), "closed": True}))
    for control in (joystick, path):
        out = tmp_path / f"{control.stem}.npz"
        assert bake_main([str(out), "--model", str(policy_model), "--frames", "40", "--characters", "2",
                          "--control", str(control), "-q"]) == 0
        assert np.load(out)["root_positions"].shape == (40, 2, 3)
    bad = tmp_path / "bad.json"
    for text, message in (("[[0, 1, 2]]", "rows of [t, dir_x, dir_z, speed] or of [x, z]"),
                          ("{\"task\": \"path\"}", "a path control needs 'points'"),
                          ("[[0, 0, 0, 1]]", "must not be [0, 0]"),
                          ("[[0, 0], [0.05, 0]]", "at least 0.2 m long"),
                          ("[1, 2", "invalid JSON at line 1")):
        bad.write_text(text)
        assert bake_main([str(tmp_path / "x.npz"), "--model", str(policy_model), "--control", str(bad), "-q"]) == 2
        assert message in capsys.readouterr().err
    assert bake_main([str(tmp_path / "x.npz"), "--model", str(model_dir), "--control", str(path), "-q"]) == 2
    assert "has no path policy" in capsys.readouterr().err


def test_controller_takes_the_godot_bridges_per_slot_arrays(policy_model):
    model = load_model(policy_model)
    n = 4
    control = {"task": np.array(["joystick", "", "target", ""], dtype=object),  # what Bridge._control sends
               "direction": np.array([[0, 1], [0, 0], [0, 0], [0, 0]], np.float32),
               "speed": np.array([1.5, 0, 0, 0], np.float32), "target": np.array([[0, 0], [0, 0], [3, 4], [0, 0]],
                                                                                  np.float32)}
    ctrl = Controller(model, n, seed=0)
    z = np.zeros((n, model.latent_size), np.float32)
    poses = ctrl.step(latents=z, control=control)
    assert np.isfinite(poses.root_position).all()


def test_policies_exported_at_once_both_land_in_model_json(policy_model, tmp_path, monkeypatch):
    """Exports lock the model directory, so concurrent ones never write model.json from the same old copy."""
    import threading
    import time

    import trainer.policy.export as policy_export
    from runtime.atomic import folder_lock

    out = tmp_path / "m"
    shutil.copytree(policy_model, out)
    meta = json.loads((out / "model.json").read_text())
    meta["policies"] = {}
    for name in ("policy-joystick.onnx", "policy-target.onnx", "policy-path.onnx"):
        meta["files"].pop(name)
    (out / "model.json").write_text(json.dumps(meta))
    stepper = OnnxStepper(load_model(out), CPU)
    entered = []
    unlocked = policy_export._export_locked
    monkeypatch.setattr(policy_export, "_export_locked",
                        lambda *a: entered.append(time.monotonic()) or unlocked(*a))

    def export(task: str) -> None:
        env = ControlEnv(task, stepper, 2)
        net = ActorCritic(env.obs_size, env.action_size, PPOConfig(hidden=32))
        export_policy(net, out, task, env.blocks, env.config.runtime(task), {"frames": 0})

    threads = [threading.Thread(target=export, args=(t,)) for t in ("joystick", "target")]
    with folder_lock(out):  # both exports wait for this holder, then run one after the other
        for t in threads:
            t.start()
        time.sleep(0.3)
        released = time.monotonic()
    for t in threads:
        t.join(60)
    assert len(entered) == 2 and min(entered) >= released
    assert sorted(load_model(out).policies) == ["joystick", "target"]
