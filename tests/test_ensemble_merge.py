"""Weight-space merge methods: greedy soup, task arithmetic, TIES, DARE and SLERP on small random state dicts (against
``peft.utils.merge_utils`` and by hand), their refusals before any work, and one tiny job that merges two members."""

import math

import pytest
import torch
from peft.utils import merge_utils

from conftest import load_json, plugins
from tessera.core import job
from tessera.core.cli import compose_config
from tessera.core.ensembling import EnsembleContext, Member
from tessera.core.errors import ConfigError
from tessera.plugins.ensemblers.dare import DareConfig, dare_merge
from tessera.plugins.ensemblers.greedy_soup import GreedySoup, greedy_soup, validation_score
from tessera.plugins.ensemblers.slerp import slerp
from tessera.plugins.ensemblers.task_arithmetic import TaskArithmetic, TaskArithmeticConfig
from tessera.plugins.ensemblers.ties import Ties, TiesConfig

SMOKE = ["experiment=smoke", "data.limit_train=32", "data.limit_eval=32"]
MEMBERS = "{name:a,init:base,overrides:['trainer.seed=1']},{name:b,init:base,overrides:['trainer.seed=2']}"


def random_states(count: int, seed: int = 0):
    """``count`` member state dicts and a base that lacks the head (``head.weight``), as a new classifier."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"layer.weight": (6, 5), "layer.bias": (6,), "head.weight": (3, 6)}
    base = {k: torch.randn(s, generator=generator) for k, s in shapes.items() if k != "head.weight"}
    members = [{k: torch.randn(s, generator=generator) for k, s in shapes.items()} for _ in range(count)]
    return members, base


def context(weights, members=None, validate=None):
    names = [Member(f"m{i}", f"m{i}", None) for i in range(len(weights))] if members is None else members
    return EnsembleContext(run=None, members=names, weights=weights, validate=validate)


def planned(overrides: list[str], run_dir) -> list[job.Stage]:
    compose = lambda o: compose_config(o, plugins())  # noqa: E731
    return job.plan(compose(overrides), overrides, compose, run_dir)


def test_task_arithmetic_adds_the_weighted_task_vectors_to_the_base():
    members, base = random_states(3)
    weights = [0.5, 0.3, 0.2]
    merged = TaskArithmetic(TaskArithmeticConfig(scaling=0.7)).merge(members, base, context(weights))
    for key in base:
        vectors = [m[key] - base[key] for m in members]
        relative = torch.tensor([1.5, 0.9, 0.6])
        expected = base[key] + 0.7 * merge_utils.task_arithmetic(vectors, relative)
        torch.testing.assert_close(merged[key], expected)
        by_hand = base[key] + 0.7 * sum(r * v for r, v in zip(relative, vectors))
        torch.testing.assert_close(merged[key], by_hand)
    head = sum(w * m["head.weight"] for w, m in zip(weights, members))
    torch.testing.assert_close(merged["head.weight"], head)


def test_task_arithmetic_scaled_by_one_over_the_members_is_the_linear_soup():
    members, base = random_states(2)
    merged = TaskArithmetic(TaskArithmeticConfig(scaling=0.5)).merge(members, base, context([0.5, 0.5]))
    for key in members[0]:
        torch.testing.assert_close(merged[key], (members[0][key] + members[1][key]) / 2)


def test_ties_matches_peft_tensor_by_tensor_and_a_hand_worked_example():
    members, base = random_states(3)
    weights = [0.25, 0.25, 0.5]
    config = TiesConfig(density=0.4, majority_sign="frequency", scaling=0.9)
    merged = Ties(config).merge(members, base, context(weights))
    for key in base:
        vectors = [m[key] - base[key] for m in members]
        expected = merge_utils.ties(vectors, torch.tensor([0.75, 0.75, 1.5]), 0.4, "frequency")
        torch.testing.assert_close(merged[key], base[key] + 0.9 * expected)
    # Trim to the 2 largest of 4, elect the sign of the sum, mean of the agreeing values.
    zero = {"w": torch.zeros(4)}
    pair = [{"w": torch.tensor([3.0, -1.0, 0.5, 2.0])}, {"w": torch.tensor([1.0, 2.0, -0.1, -4.0])}]
    by_hand = Ties(TiesConfig(density=0.5)).merge(pair, zero, context([0.5, 0.5]))
    torch.testing.assert_close(by_hand["w"], torch.tensor([3.0, 2.0, 0.0, -4.0]))
    agreeing = [{"w": torch.tensor([2.0, -2.0])}, {"w": torch.tensor([4.0, -6.0])}]
    mean = Ties(TiesConfig(density=1.0)).merge(agreeing, {"w": torch.zeros(2)}, context([0.5, 0.5]))
    torch.testing.assert_close(mean["w"], torch.tensor([3.0, -4.0]))


@pytest.mark.parametrize("combination", ["linear", "ties"])
def test_dare_matches_peft_from_the_seed_and_leaves_the_global_random_state(combination):
    members, base = random_states(2)
    config = DareConfig(density=0.3, combination=combination)
    before = torch.random.get_rng_state()
    merged = dare_merge(members, base, [0.5, 0.5], config, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(7)
    combine = merge_utils.dare_ties if combination == "ties" else merge_utils.dare_linear
    extra = ("total",) if combination == "ties" else ()
    for key in members[0]:
        if key in base:
            vectors = [m[key] - base[key] for m in members]
            expected = base[key] + combine(vectors, torch.tensor([1.0, 1.0]), 0.3, *extra)
            torch.testing.assert_close(merged[key], expected)
    again = dare_merge(members, base, [0.5, 0.5], config, seed=7)
    other = dare_merge(members, base, [0.5, 0.5], config, seed=8)
    assert all(torch.equal(merged[k], again[k]) for k in merged)
    assert not torch.equal(merged["layer.weight"], other["layer.weight"])


def test_dare_drops_values_and_rescales_the_kept_ones():
    vector = torch.arange(1.0, 2001.0)
    members = [{"w": vector}, {"w": torch.zeros(2000)}]
    merged = dare_merge(members, {"w": torch.zeros(2000)}, [0.5, 0.5], DareConfig(density=0.25), seed=0)["w"]
    kept = merged != 0
    torch.testing.assert_close(merged[kept], vector[kept] / 0.25)
    assert 0.2 < kept.float().mean().item() < 0.3


def test_slerp_runs_from_the_first_member_to_the_second_along_the_arc():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    torch.testing.assert_close(slerp(0.0, first, second), first)
    torch.testing.assert_close(slerp(1.0, first, second), second)
    second = second * first.norm() / second.norm()
    angle = torch.arccos(torch.dot(first.flatten(), second.flatten()) / first.norm() ** 2)
    for t in (0.25, 0.5, 0.8):
        mixed = slerp(t, first, second)
        assert mixed.norm().item() == pytest.approx(first.norm().item(), rel=1e-5)
        cosine = torch.dot(mixed.flatten(), first.flatten()) / first.norm() ** 2
        assert math.acos(min(cosine.item(), 1.0)) == pytest.approx(t * angle.item(), rel=1e-4)
    # The linear path's midpoint is shorter: slerp keeps the norm where the average shrinks it.
    assert ((first + second) / 2).norm() < slerp(0.5, first, second).norm()
    torch.testing.assert_close(slerp(0.3, first, 2 * first), 1.3 * first)


def test_greedy_soup_keeps_a_member_only_while_the_soup_does_not_get_worse():
    members = [{"w": torch.tensor([5.0])}, {"w": torch.tensor([1.0])}, {"w": torch.tensor([-1.0])}]

    def closeness(state):
        return -state["w"].abs().item()

    soup, kept, scores, best = greedy_soup(members, [1 / 3] * 3, closeness)
    assert kept == [1, 2] and scores == [-5.0, -1.0, -1.0] and best == 0.0
    torch.testing.assert_close(soup["w"], torch.tensor([0.0]))
    names = [Member(name, name, None) for name in ("far", "near", "other")]

    def validate(state):
        return {"loss": state["w"].abs().item(), "accuracy": 1.0 / (1.0 + state["w"].abs().item())}

    merger = GreedySoup(GreedySoup.Config())
    merged = merger.merge(members, {}, context([1 / 3] * 3, names, validate))
    assert merger.details()["kept"] == ["near", "other"] and merger.details()["soup_score"] == 1.0
    torch.testing.assert_close(merged["w"], torch.tensor([0.0]))
    assert validation_score({"loss": 0.3, "perplexity": 1.35}) == -0.3
    assert validation_score({"loss": 0.3, "classification_accuracy": 0.8}) == 0.8


@pytest.mark.parametrize(
    "stages, message",
    [
        (
            f"{MEMBERS},{{name:c,init:base}},{{name:e,init:base,overrides:['ensemble=slerp','adapter=none']}}",
            "ensemble=slerp interpolates exactly two members and has 3",
        ),
        (
            f"{MEMBERS},{{name:e,init:base,overrides:['ensemble=slerp','adapter=none','ensemble.slerp.t=1.5']}}",
            "ensemble=slerp: t=1.5 is outside [0, 1]",
        ),
        (
            f"{MEMBERS},{{name:e,init:base,overrides:['ensemble=ties','adapter=none','ensemble.ties.density=0']}}",
            "ensemble=ties: density=0.0 is outside (0, 1]",
        ),
        (
            f"{MEMBERS},{{name:e,init:base,overrides:['ensemble=dare','adapter=none','ensemble.dare.density=1.5']}}",
            "ensemble=dare: density=1.5 is outside (0, 1]",
        ),
        (
            f"{MEMBERS},{{name:e,init:base,overrides:['ensemble=dare','adapter=none','ensemble.dare.combination=svd']}}",
            "ensemble=dare: combination=svd is not one of linear, ties",
        ),
        (
            f"{MEMBERS},{{name:e,init:base,overrides:['ensemble=peft_merge','adapter=none']}}",
            "ensemble=peft_merge cannot be combined with the sequence-classification task",
        ),
    ],
)
def test_bad_merge_parameters_are_refused_before_any_work(stages, message):
    with pytest.raises(ConfigError) as caught:
        job.validate(planned([*SMOKE, f"stages=[{stages}]"], None), plugins())
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_decoder_job_merges_two_lora_members_by_peft_merge_greedy_soup_and_slerp(tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm.config.lora import LoRAConfig
    from vllm.lora.peft_helper import PEFTHelper

    from tessera.core.models import load_model

    decoder = [*SMOKE, "data.limit_eval=16", "trainer.num_threads=1", "model=tiny_llama", "objective=clm"]
    merges = [
        "{name:merged,init:base,overrides:['ensemble=peft_merge','adapter=none','ensemble.peft_merge.weights=[3,1]']}",
        "{name:soup,init:base,overrides:['ensemble=greedy_soup','adapter=none','ensemble.greedy_soup.members=[a,b]']}",
        "{name:arc,init:base,overrides:['ensemble=slerp','adapter=none','ensemble.slerp.t=1','ensemble.slerp.members=[a,b]']}",
    ]
    stages = "{name:a,init:base},{name:b,init:base,overrides:['trainer.learning_rate=2e-3']}," + ",".join(merges)
    run_dir = tmp_path / "run"
    overrides = [*decoder, f"stages=[{stages}]"]
    job.Job(planned(overrides, run_dir), run_dir, plugins()).run()
    exports = {name: run_dir / "stages" / name / "export" for name in ("a", "b", "merged", "soup", "arc")}
    a, b, merged, soup, arc = (load_file(exports[name] / "model.safetensors") for name in exports)
    assert any(not torch.equal(a[key], b[key]) for key in a)

    # peft_merge (cat): one adapter of the summed ranks, vLLM-valid, whose update is the members' weighted sum.
    adapter = exports["merged"] / "adapters" / "merged"
    rank = load_json(adapter / "adapter_config.json")["r"]
    assert rank == 2 * load_json(exports["a"] / "adapters" / "lora" / "adapter_config.json")["r"]
    PEFTHelper.from_local_dir(str(adapter), 8192).validate_legal(LoRAConfig(max_lora_rank=rank))
    cfg = compose_config([*decoder, "ensemble=peft_merge", "adapter=none"], plugins())
    tokenizer = AutoTokenizer.from_pretrained(exports["merged"])
    base = load_model(cfg.model, "causal-lm", [], tokenizer, cfg.trainer.seed)
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    for key in merged:
        expected = base_state[key] + 0.75 * (a[key] - base_state[key]) + 0.25 * (b[key] - base_state[key])
        torch.testing.assert_close(merged[key], expected, atol=1e-5, rtol=1e-4)
    unmerged = PeftModel.from_pretrained(base, adapter).eval()
    model = AutoModelForCausalLM.from_pretrained(exports["merged"]).eval()
    batch = tokenizer(["A film of rare beauty."], return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(unmerged(**batch).logits, model(**batch).logits, atol=1e-4, rtol=1e-4)

    # greedy_soup (scored by minus the validation loss) and slerp at t = 1.
    for key in arc:
        torch.testing.assert_close(arc[key], b[key])
    details = load_json(run_dir / "stages" / "soup" / "metrics.json")["ensemble"]["details"]
    assert set(details["member_scores"]) == {"a", "b"} and all(v < 0 for v in details["member_scores"].values())
    kept = [{"a": a, "b": b}[name] for name in details["kept"]]
    for key in soup:
        torch.testing.assert_close(soup[key], sum(state[key] for state in kept) / len(kept))
