"""The paper's controller (MnasNet's): a recurrent policy over the decisions, trained by policy gradient.

At each step an LSTM cell reads the embedding of the previous decision and a linear head per decision
gives a softmax over its choices; sampling all steps gives one point. After each completed trial the
policy takes one gradient step on the trial's reward R:

- `reinforce`: loss = -(R - b) * log pi(a), b a moving average of past rewards (the baseline);
- `ppo`: the clipped surrogate of PPO, -min(r A, clip(r, 1 - eps, 1 + eps) A), r = pi(a) / pi_old(a),
  with pi_old the probability the point had when it was sampled (stored on the trial). Trials sampled by
  other workers, or by an older policy, are off-policy; the ratio corrects for that.

The policy is rebuilt from the study by replaying the sampled trials' rewards in completion order, so it
survives a restart and every worker learns from every trial.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from search.nas.samplers import REWARD_KEY, PointSampler, scored_trials, seen_hashes
from search.nas.space import SearchSpace, point_hash

SAMPLED_KEY = "effx:rl"  # the decision indices and their log-probability when sampled


class Policy(nn.Module):
    def __init__(self, sizes: list[int], hidden: int = 64) -> None:
        super().__init__()
        self.sizes = sizes
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.cell = nn.LSTMCell(hidden, hidden)
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden) for n in sizes)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)

    def forward(self, actions: list[int] | None = None, generator: torch.Generator | None = None):
        """(actions, sum of log-probabilities, sum of entropies): sampled when `actions` is None, else scored."""
        state = None
        x = self.start
        chosen, log_prob, entropy = [], torch.zeros(()), torch.zeros(())
        for i, (embedding, head) in enumerate(zip(self.embeddings, self.heads, strict=True)):
            state = self.cell(x, state)
            log_probs = torch.log_softmax(head(state[0])[0], dim=-1)
            action = int(torch.multinomial(log_probs.exp(), 1, generator=generator)) if actions is None else actions[i]
            chosen.append(action)
            log_prob = log_prob + log_probs[action]
            entropy = entropy - (log_probs.exp() * log_probs).sum()
            x = embedding(torch.tensor([action]))
        return chosen, log_prob, entropy


class PolicyGradient:
    """The policy, its optimizer and the moving-average baseline."""

    def __init__(self, sizes: list[int], seed: int = 0, update: str = "reinforce", lr: float = 0.01, baseline_decay: float = 0.9,
                 entropy_weight: float = 1e-3, clip: float = 0.2) -> None:
        if update not in ("reinforce", "ppo"):
            raise ValueError(f"policy update is 'reinforce' or 'ppo', got {update!r}")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.policy = Policy(sizes)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.update, self.baseline_decay, self.entropy_weight, self.clip = update, baseline_decay, entropy_weight, clip
        self.baseline: float | None = None

    def sample(self, generator: torch.Generator) -> tuple[list[int], float]:
        with torch.no_grad():
            actions, log_prob, _ = self.policy(generator=generator)
        return actions, float(log_prob)

    def learn(self, actions: list[int], reward: float, sampled_log_prob: float) -> float:
        """One gradient step on one trial; returns its advantage."""
        self.baseline = reward if self.baseline is None else self.baseline
        advantage = reward - self.baseline
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        _, log_prob, entropy = self.policy(actions)
        if self.update == "ppo":
            ratio = torch.exp(log_prob - sampled_log_prob)
            objective = torch.minimum(ratio * advantage, ratio.clamp(1 - self.clip, 1 + self.clip) * advantage)
        else:
            objective = log_prob * advantage
        loss = -objective - self.entropy_weight * entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return advantage

    def probabilities(self) -> list[list[float]]:
        """The greedy path's per-decision choice probabilities (what the policy has learned; for reports and tests)."""
        with torch.no_grad():
            state, x, rows = None, self.policy.start, []
            for embedding, head in zip(self.policy.embeddings, self.policy.heads, strict=True):
                state = self.policy.cell(x, state)
                probs = torch.softmax(head(state[0])[0], dim=-1)
                rows.append(probs.tolist())
                x = embedding(probs.argmax().view(1))
        return rows


class PolicyGradientSampler(PointSampler):
    def __init__(self, space: SearchSpace, seed: int = 0, update: str = "reinforce") -> None:
        super().__init__(space, seed)
        self.decisions = space.decisions()
        self.learner = PolicyGradient([len(options) for _, options in self.decisions], seed, update)
        self.learned: set[int] = set()  # trial numbers already learned from

    def catch_up(self, study) -> int:
        """Learn from every scored trial the policy sampled and has not seen yet; how many."""
        fresh = [t for t in scored_trials(study) if t.number not in self.learned]
        for trial in fresh:
            self.learned.add(trial.number)
            sampled = trial.system_attrs.get(SAMPLED_KEY)
            if sampled:  # baselines and other controllers' points were not drawn from the policy
                self.learner.learn(sampled["actions"], trial.user_attrs[REWARD_KEY], sampled["log_prob"])
        return len(fresh)

    def propose(self, study, trial) -> dict:
        self.catch_up(study)
        digest = hashlib.sha256(f"{self.seed}-{trial.number}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        seen = seen_hashes(study)
        for _ in range(11):  # a new point if the policy gives one within 11 draws
            actions, log_prob = self.learner.sample(generator)
            point = self.point_of(actions)
            if point_hash(point) not in seen:
                break
        study._storage.set_trial_system_attr(trial._trial_id, SAMPLED_KEY, {"actions": actions, "log_prob": log_prob})
        return point

    def point_of(self, actions: list[int]) -> dict:
        return self.space.from_params({name: options[a] for (name, options), a in zip(self.decisions, actions, strict=True)})
