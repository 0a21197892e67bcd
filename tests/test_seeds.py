"""Derived seeds: one function, distinct streams per use, reproducible from the run's seed alone."""

from __future__ import annotations

import itertools

from conftest import make_tiny_llama

from brainstacks_pl.config import StackConfig
from brainstacks_pl.model import BrainstacksModel
from brainstacks_pl.modules.sft import StackSFTModule
from brainstacks_pl.phase import stack_seed
from brainstacks_pl.seeds import derive_seed


def test_derived_seeds_are_stable_63_bit_and_never_shared_between_uses():
    keys = [
        (seed, purpose, *parts)
        for seed in range(3)
        for purpose in ("stack", "gating-noise", "rollout")
        for parts in itertools.product(range(6), range(6))
    ]
    seeds = [derive_seed(*key) for key in keys]
    assert len(set(seeds)) == len(keys), "every (seed, purpose, parts) has its own seed"
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(0, "stack", 1, 2) == derive_seed(0, "stack", 1, 2)  # no hidden state
    # A linear mix let a large part reach another's seed (0 * 1_000_003 + 1 * 1_009 + 0 == 0 + 0 + 1_009).
    assert derive_seed(0, "stack", 1, 0) != derive_seed(0, "stack", 0, 1_009)


def test_each_use_at_seed_0_draws_its_own_stream():
    """Stack initialisation, gating noise and GRPO rollouts were all seeded 0 at seed 0."""
    module = StackSFTModule("unused", stack=StackConfig(rank=4), domains=["chat", "math"], seed=0)
    module.stacks = BrainstacksModel(make_tiny_llama(), module.stack_config, ["chat", "math"])
    module.stacks.add_stack("math", 1, seed=stack_seed(0, 1, 1))
    module.on_train_epoch_start()
    noise = module.stacks.context.noise_generator.initial_seed()
    assert noise == derive_seed(0, "gating-noise", 1, 1, 0)
    firsts = {stack_seed(0, 0, 0), derive_seed(0, "gating-noise", 0, 0, 0), derive_seed(0, "rollout", 0, 0)}
    assert len(firsts) == 3 and 0 not in firsts
