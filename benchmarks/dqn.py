"""DQN on CartPole end to end: ``emphatic_rl.train`` against Stable-Baselines3's ``DQN`` and CleanRL's ``dqn.py`` loop.

    python benchmarks/dqn.py speed                 # steps per second, interleaved rounds
    python benchmarks/dqn.py learning              # final returns over 5 seeds
    python benchmarks/dqn.py all                   # both -> benchmarks/results/dqn_cpu.md

Matched settings (ours are the ``DQNOptions`` defaults): one CartPole env; Q-network MLP 4-128-128-2 (ReLU); Adam, lr
1e-3; gamma 0.99; buffer 50 000 transitions; batch 128; learning starts after 1 000 steps; one gradient step every
env step; hard target update every 500 steps; epsilon linear from 1.0 to 0.05 over 10 000 steps (speed runs: over
half the run) then constant; Huber loss and gradient-norm clipping at 10 (ours and SB3; CleanRL's loop uses the
mean-squared error and no clipping, as CleanRL writes it).

- **ours**: ``emphatic_rl.train.train`` (the ``emphatic-rl train --agent dqn`` loop: native batched CartPole,
  ``TrajectoryBuffer``, the DQN agent, episode statistics, logging, a final evaluation and checkpoint).
- **SB3**: ``stable_baselines3.DQN("MlpPolicy", "CartPole-v1", ...)`` with the settings above, ``learn(steps)``.
- **ours, torch backend** (``--loops``, speed only): ours with ``DQNOptions(backend="torch")``, the batched tensor
  program (written-out backward, fused Adam) that the agent runs on a GPU, for comparison with the compiled default.
- **CleanRL**: a faithful transcription of the training loop of CleanRL's ``cleanrl/dqn.py`` (Gymnasium
  ``SyncVectorEnv`` with one env, SB3's ``ReplayBuffer`` without timeout handling, ``nn.Sequential`` Q-network,
  epsilon-greedy with ``random.random()``, MSE TD loss, Polyak copy with tau = 1), TensorBoard writes left out.

Speed: each round runs the three back to back (order rotating), ``--steps`` env steps each, timed around the training
call only (construction excluded; ours includes the final one-episode evaluation and checkpoint of ``train``), after
one untimed warm-up run of each loop (1 100 steps: imports, loading compiled kernels, lazy initialisations), in
wall-clock time and in the process's CPU time (less disturbed on a shared machine); the table gives medians over rounds
and the median per-round ratios. Single thread (``torch.set_num_threads(1)``; numba and the BLAS its matrix products
call also get one thread). Ours runs the DQN agent's default ``backend="auto"``, which on the CPU is the compiled
(numba) acting and gradient step. Learning: ``--seeds`` seeds per framework, ``--learning-steps`` env steps,
then 10 greedy evaluation episodes; the mean final return with a 95% t-interval over seeds. Our seeds run as one
population of independent learners (own initialisation, env copy, replay streams and updates: the library's way to
run seeds); SB3's as one run per seed.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the BLAS that numba's matrix products call

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HIDDEN = (128, 128)
SETTINGS = dict(
    learning_rate=1e-3,
    gamma=0.99,
    buffer_size=50_000,
    batch_size=128,
    learning_starts=1_000,
    train_every=1,
    gradient_steps=1,
    target_update_every=500,
    epsilon_start=1.0,
    epsilon_end=0.05,
    max_grad_norm=10.0,
)


class Clock:
    """Wall-clock and CPU time (this process, all threads) from construction to ``stop()``."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> Clock:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return self


T_975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


# ----------------------------------------------------------------------------------------------------------- ours
def run_ours(
    steps: int, decay_steps: int, seed: int, eval_episodes: int = 1, population: int = 1, backend: str = "auto"
) -> tuple[Clock, list[float]]:
    """Train ``population`` independent learners in one run; return (the ``Clock`` of ``train``, final greedy
    evaluation return of each). ``backend``: the DQN agent's (``auto``: the compiled kernels on the CPU)."""
    from emphatic_rl.config import TrainConfig
    from emphatic_rl.train import build_run, train

    config = TrainConfig(
        agent="dqn",
        env="cartpole",
        steps=steps,
        seed=seed,
        population_size=population,
        eval_every=0,
        eval_episodes=eval_episodes,
        checkpoint_every=0,
        log_every=500,
        progress=False,
        agent_options=dict(SETTINGS, hidden=HIDDEN, epsilon_decay_steps=decay_steps, backend=backend),
    )
    run = build_run(config)
    with tempfile.TemporaryDirectory() as folder:
        clock = Clock()
        result = train(config, Path(folder) / "run", run=run)
        clock.stop()
    return clock, result.final_eval_return.tolist()


# ----------------------------------------------------------------------------------------------------------- SB3
def make_sb3(steps: int, decay_steps: int, seed: int):
    from stable_baselines3 import DQN

    s = SETTINGS
    return DQN(
        "MlpPolicy",
        "CartPole-v1",
        learning_rate=s["learning_rate"],
        buffer_size=s["buffer_size"],
        learning_starts=s["learning_starts"],
        batch_size=s["batch_size"],
        tau=1.0,
        gamma=s["gamma"],
        train_freq=s["train_every"],
        gradient_steps=s["gradient_steps"],
        target_update_interval=s["target_update_every"],
        exploration_fraction=min(1.0, decay_steps / steps),
        exploration_initial_eps=s["epsilon_start"],
        exploration_final_eps=s["epsilon_end"],
        max_grad_norm=s["max_grad_norm"],
        policy_kwargs=dict(net_arch=list(HIDDEN)),
        device="cpu",
        seed=seed,
        verbose=0,
    )


def run_sb3(steps: int, decay_steps: int, seed: int, eval_episodes: int = 0) -> tuple[Clock, float]:
    model = make_sb3(steps, decay_steps, seed)
    clock = Clock()
    model.learn(total_timesteps=steps)
    clock.stop()
    final = math.nan
    if eval_episodes:
        from stable_baselines3.common.evaluation import evaluate_policy

        final, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=eval_episodes, deterministic=True)
    return clock, float(final)


# ------------------------------------------------------------------------------------------------------- CleanRL
def run_cleanrl(steps: int, decay_steps: int, seed: int) -> tuple[Clock, float]:
    """The loop of CleanRL's ``dqn.py`` (https://github.com/vwxyzjn/cleanrl, ``cleanrl/dqn.py``), transcribed with
    the matched settings; Gymnasium 1.x's same-step autoreset supplies the true final observation as CleanRL's
    ``real_next_obs``."""
    import gymnasium as gym
    import torch.nn.functional as F
    from stable_baselines3.common.buffers import ReplayBuffer
    from torch import nn

    s = SETTINGS
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = torch.device("cpu")

    def make_env():
        env = gym.make("CartPole-v1")
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed)
        return env

    envs = gym.vector.SyncVectorEnv([make_env], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    class QNetwork(nn.Module):
        def __init__(self, env):
            super().__init__()
            self.network = nn.Sequential(
                nn.Linear(np.array(env.single_observation_space.shape).prod(), HIDDEN[0]),
                nn.ReLU(),
                nn.Linear(HIDDEN[0], HIDDEN[1]),
                nn.ReLU(),
                nn.Linear(HIDDEN[1], env.single_action_space.n),
            )

        def forward(self, x):
            return self.network(x)

    def linear_schedule(start_e: float, end_e: float, duration: int, t: int):
        slope = (end_e - start_e) / duration
        return max(slope * t + start_e, end_e)

    q_network = QNetwork(envs).to(device)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=s["learning_rate"])
    target_network = QNetwork(envs).to(device)
    target_network.load_state_dict(q_network.state_dict())
    rb = ReplayBuffer(
        s["buffer_size"],
        envs.single_observation_space,
        envs.single_action_space,
        device,
        handle_timeout_termination=False,
    )
    clock = Clock()
    obs, _ = envs.reset(seed=seed)
    for global_step in range(steps):
        epsilon = linear_schedule(s["epsilon_start"], s["epsilon_end"], decay_steps, global_step)
        if random.random() < epsilon:
            actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
        else:
            q_values = q_network(torch.Tensor(obs).to(device))
            actions = torch.argmax(q_values, dim=1).cpu().numpy()
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        real_next_obs = next_obs.copy()
        for idx, trunc in enumerate(truncations | terminations):
            if trunc:
                real_next_obs[idx] = infos["final_obs"][idx]
        rb.add(obs, real_next_obs, actions, rewards, terminations, infos)
        obs = next_obs
        if global_step > s["learning_starts"]:
            if global_step % s["train_every"] == 0:
                data = rb.sample(s["batch_size"])
                with torch.no_grad():
                    target_max, _ = target_network(data.next_observations).max(dim=1)
                    td_target = data.rewards.flatten() + s["gamma"] * target_max * (1 - data.dones.flatten())
                old_val = q_network(data.observations).gather(1, data.actions).squeeze()
                loss = F.mse_loss(td_target, old_val)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if global_step % s["target_update_every"] == 0:
                for target_param, q_param in zip(target_network.parameters(), q_network.parameters(), strict=True):
                    target_param.data.copy_(1.0 * q_param.data + (1.0 - 1.0) * target_param.data)
    clock.stop()
    envs.close()
    return clock, math.nan


def run_ours_torch(steps: int, decay_steps: int, seed: int) -> tuple[Clock, list[float]]:
    """Ours with the DQN agent's torch backend (the batched tensor program the GPU runs), for comparison."""
    return run_ours(steps, decay_steps, seed, backend="torch")


RUNNERS = {"ours": run_ours, "SB3": run_sb3, "CleanRL loop": run_cleanrl, "ours, torch backend": run_ours_torch}


def speed(steps: int, rounds: int, loops: list[str]) -> list[str]:
    """Per loop: env steps per wall-clock second and per CPU second (the process's CPU time, which a shared machine
    disturbs less), and our rate over each loop's, as the median of the within-round ratios."""
    decay = steps // 2
    names = ["ours", *[name for name in RUNNERS if name in loops and name != "ours"]]
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu_rates: dict[str, list[float]] = {name: [] for name in names}
    warmup = SETTINGS["learning_starts"] + 100
    for name in names:  # one untimed short run of each loop first: imports, compiled-kernel caches, lazy inits
        RUNNERS[name](warmup, warmup // 2, seed=rounds)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            clock, _ = RUNNERS[name](steps, decay, seed=r)
            rates[name].append(steps / clock.wall)
            cpu_rates[name].append(steps / clock.cpu)
            print(
                f"round {r} {name}: {steps / clock.wall:.0f} steps/s, {steps / clock.cpu:.0f} steps per CPU-second",
                flush=True,
            )

    def ratio(table: dict[str, list[float]], name: str) -> str:
        ratios = [a / b for a, b in zip(table["ours"], table[name], strict=True)]
        return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"

    lines = [
        "| loop | steps/s (median, range) | ours / this, wall (median of per-round ratios, range) "
        "| steps per CPU-second (median) | ours / this, CPU time |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        lines.append(
            f"| {name} | {statistics.median(rates[name]):.0f} ({min(rates[name]):.0f}-{max(rates[name]):.0f}) "
            f"| {ratio(rates, name)} | {statistics.median(cpu_rates[name]):.0f} | {ratio(cpu_rates, name)} |"
        )
    return lines


def interval(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    half = T_975.get(len(values), 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.1f} ± {half:.1f}"


def learning(steps: int, seeds: int, frameworks: list[str], first_seed: int = 0) -> list[str]:
    """Ours: the ``seeds`` learners as one population run (independent members: own network initialisation, env
    copy, replay streams and updates; the library's way to run seeds). SB3: one run per seed."""
    finals: dict[str, list[float]] = {}
    rates: dict[str, float] = {}
    if "ours" in frameworks:
        clock, finals["ours"] = run_ours(steps, 10_000, seed=first_seed, eval_episodes=10, population=seeds)
        rates["ours"] = steps / clock.wall
        print(f"ours: final returns {finals['ours']} ({rates['ours']:.0f} steps/s of {seeds} learners)", flush=True)
    if "SB3" in frameworks:
        finals["SB3"], per_seed_rates = [], []
        for seed in range(first_seed, first_seed + seeds):
            clock, final = run_sb3(steps, 10_000, seed=seed, eval_episodes=10)
            finals["SB3"].append(final)
            per_seed_rates.append(steps / clock.wall)
            print(f"SB3 seed {seed}: final return {final:.1f} ({per_seed_rates[-1]:.0f} steps/s)", flush=True)
        rates["SB3"] = statistics.median(per_seed_rates)
    lines = [
        "| loop | final greedy return, mean ± 95% t-interval | per seed | steps/s |",
        "|---|---|---|---|",
    ]
    for name, values in finals.items():
        per_seed = ", ".join(f"{v:.0f}" for v in values)
        lines.append(f"| {name} | {interval(values)} | {per_seed} | {rates[name]:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["speed", "learning", "all"])
    parser.add_argument("--steps", type=int, default=4_000, help="env steps per speed run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--learning-steps", type=int, default=30_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="learning: seeds first_seed ... + seeds - 1")
    parser.add_argument("--frameworks", nargs="+", default=["ours", "SB3"], choices=["ours", "SB3"])
    parser.add_argument(
        "--loops",
        nargs="+",
        default=["SB3", "CleanRL loop"],
        choices=[name for name in RUNNERS if name != "ours"],
        help="speed: the loops timed against ours",
    )
    parser.add_argument("--output", type=Path, default=None, help="write a markdown report here")
    args = parser.parse_args()
    if args.steps <= SETTINGS["learning_starts"] or args.learning_steps <= SETTINGS["learning_starts"]:
        parser.error(f"--steps and --learning-steps must exceed learning_starts = {SETTINGS['learning_starts']}")
    if args.rounds < 1 or args.seeds < 1:
        parser.error("--rounds and --seeds must be >= 1")
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    sections = []
    if args.what in ("speed", "all"):
        lines = speed(args.steps, args.rounds, args.loops)
        print("\n".join(lines))
        sections += [f"## Speed ({args.steps} env steps per run, {args.rounds} interleaved rounds)", "", *lines, ""]
    if args.what in ("learning", "all"):
        lines = learning(args.learning_steps, args.seeds, args.frameworks, args.first_seed)
        print("\n".join(lines))
        sections += [f"## Learning ({args.learning_steps} env steps, {args.seeds} seeds)", "", *lines, ""]
    if args.output is None:
        return
    import stable_baselines3

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"(1 thread), stable-baselines3 {stable_baselines3.__version__}, Python {platform.python_version()}; load "
        f"average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    text = "\n".join(["# DQN on CartPole, end to end, on CPU", "", f"Machine: {machine}.", "", *sections])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
