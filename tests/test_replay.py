"""Replay (harness/replay.py) gives real decoding's accept lengths: at T = 0 along vanilla's answer, at T > 0 along
the text a real decode sampled; and the runner labels its rows."""
import json

import pytest
import torch

from harness import runner
from harness.decode import PromptTooLong, generate
from harness.drafter import METHODS
from harness.errors import UserError
from harness.records import answer_file, read_rows
from harness.report import build
from harness.replay import ReplayTarget, check_decoders
from harness.sampling import SamplingParams
from harness.tree import DraftTree
from harness.verify import Verifier
from tests.test_runner import TinyWords  # noqa: F401  (registers the tiny-words suite)
from tests.tiny import NoisyTreeDrafter, load_benchmark, tiny_plan, tiny_target

PROMPTS = [torch.tensor([0, 5, 9, 5, 9, 5]), torch.tensor([0, 17, 33, 2, 40, 41, 42, 17, 33])]
STOP = frozenset({1})


def decode(target, drafter, prompt, max_new_tokens, sampling=SamplingParams(), seed=0):
    return generate(target, drafter, Verifier(), prompt, max_new_tokens=max_new_tokens, stop_ids=STOP,
                    sampling=sampling, rng=torch.Generator().manual_seed(seed))


def drafters(target):
    """A tree drafter that gets drafts accepted, two learned drafts (random weights) and a chain drafter."""
    return [NoisyTreeDrafter(target, depth=3, top_k=2, noise=0.3), METHODS.get("eagle2")(target, checkpoint="random"),
            METHODS.get("medusa")(target, checkpoint="random"), METHODS.get("pld")(target)]


@pytest.mark.parametrize("max_new_tokens", [40, 7])
def test_replayed_accept_lengths_equal_real_decoding(max_new_tokens):
    target = tiny_target("llama")
    vanilla = METHODS.get("vanilla")(target)
    replaying = ReplayTarget(target)
    accepted_drafts = 0
    for drafter in drafters(target):
        for prompt in PROMPTS:
            answer = decode(target, vanilla, prompt, max_new_tokens).tokens
            real = decode(target, drafter, prompt, max_new_tokens)
            replaying.begin({"token_ids": [answer]})
            replayed = decode(replaying, drafter, prompt, max_new_tokens)
            assert replayed.tokens == real.tokens == answer
            assert replayed.accept_lengths == real.accept_lengths, drafter.name
            assert replayed.stop_reason == real.stop_reason
            accepted_drafts += sum(a - 1 for a in real.accept_lengths)
    assert accepted_drafts > max_new_tokens // 4, "the test should exercise accepted drafts"


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_p=0.9,
                                                                                      top_k=20)])
def test_replay_at_t_above_zero_along_a_real_sample_gives_its_accept_lengths(sampling):
    """With point-mass drafts the accept lengths are a function of the sampled text: replaying a method along the
    text its own real decode drew (any seed) reproduces that decode's accept lengths exactly."""
    target = tiny_target("llama")
    replaying = ReplayTarget(target)
    accepted_drafts = 0
    for drafter in drafters(target):
        for seed, prompt in enumerate(PROMPTS * 2):
            real = decode(target, drafter, prompt, 40, sampling, seed)
            replaying.begin({"token_ids": [real.tokens]})
            replayed = decode(replaying, drafter, prompt, 40, sampling, seed=99)   # another seed: nothing is drawn
            assert replayed.tokens == real.tokens
            assert replayed.accept_lengths == real.accept_lengths, drafter.name
            accepted_drafts += sum(a - 1 for a in real.accept_lengths)
    assert accepted_drafts > 20, "the test should exercise accepted drafts"


def test_replay_refuses_sampled_drafts():
    target = tiny_target("llama")
    replaying = ReplayTarget(target)
    replaying.begin({"token_ids": [[5, 9, 5]]})
    replaying.prefill(PROMPTS[0])
    tree = DraftTree(torch.tensor([5, 9]), torch.tensor([-1, 0]), q=torch.full((2, target.vocab_size), 1.0))
    with pytest.raises(UserError, match="deterministic drafts"):
        replaying.score_tree(tree)


def test_replay_stops_at_max_len_like_real_decoding():
    target = tiny_target("llama", max_len=20)
    vanilla, drafter = METHODS.get("vanilla")(target), NoisyTreeDrafter(target, depth=3, top_k=2, noise=0.3)
    answer = decode(target, vanilla, PROMPTS[1], 40)
    real = decode(target, drafter, PROMPTS[1], 40)
    replaying = ReplayTarget(target)
    replaying.begin({"token_ids": [answer.tokens]})
    replayed = decode(replaying, drafter, PROMPTS[1], 40)
    assert real.stop_reason == replayed.stop_reason == "max_len"
    assert replayed.accept_lengths == real.accept_lengths and replayed.tokens == real.tokens


def test_run_replay_writes_labelled_untimed_rows_equal_to_real_ones(tiny_dir, tmp_path):
    out = tmp_path / "run"
    runner.run(tiny_plan(tiny_dir, out, "tiny-words", max_new_tokens=24), argv=["real"])
    run_dir = runner.run(tiny_plan(tiny_dir, out, "tiny-words", max_new_tokens=24, replay=True), argv=["replay"])
    real = read_rows(answer_file(run_dir, "tiny-words", "pld", 0.0))
    replayed = read_rows(answer_file(run_dir, "tiny-words", "pld-replay", 0.0))
    assert [r["choices"][0]["accept_lengths"] for r in replayed] == [r["choices"][0]["accept_lengths"] for r in real]
    assert [r["token_ids"] for r in replayed] == [r["token_ids"] for r in real]
    assert any(len(r["token_ids"]) == 2 for r in replayed), "a two-turn question was replayed"
    row = replayed[1]
    assert row["replayed"] is True and row["method"] == "pld-replay" and "pld-replay-temperature" in row["model_id"]
    assert row["choices"][0]["wall_time"] == [None, None] and row["draft_time"] == [None, None]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["sweeps"][-1]["replayed"] is True
    assert {c["method"]: c.get("replayed", False) for c in manifest["cells"]} == {
        "vanilla": False, "pld": False, "pld-replay": True}
    from harness import metrics
    summary = metrics.summarize(metrics.load_frame([answer_file(run_dir, "tiny-words", m, 0.0)
                                                    for m in ("vanilla", "pld", "pld-replay")]))
    taus = dict(zip(summary.method, summary.tau_pooled))
    report = (build([run_dir], tmp_path / "report") / "report.md").read_text()
    assert "pld-replay" in report
    assert summary.set_index("method").loc["pld-replay"].isna()[["tok_per_s", "speedup"]].all()
    assert taus["pld-replay"] == taus["pld"]


def test_run_replay_at_t1_follows_vanillas_sampled_answers(tiny_dir, tmp_path):
    out = tmp_path / "run"
    run_dir = runner.run(tiny_plan(tiny_dir, out, "tiny-words", max_new_tokens=24, temperatures=(1.0,), replay=True),
                         argv=["replay"])
    vanilla = read_rows(answer_file(run_dir, "tiny-words", "vanilla", 1.0))
    replayed = read_rows(answer_file(run_dir, "tiny-words", "pld-replay", 1.0))
    assert [r["token_ids"] for r in replayed] == [r["token_ids"] for r in vanilla]
    assert all(r["replayed"] and r["temperature"] == 1.0 for r in replayed)


def test_replay_refuses_missing_vanilla_and_lossy_methods():
    target = tiny_target("llama")
    replaying = ReplayTarget(target)
    replaying.begin({"token_ids": []})
    with pytest.raises(UserError, match="no vanilla answer"):
        decode(replaying, METHODS.get("pld")(target), PROMPTS[0], 8)
    replaying.begin({"skipped": "prompt of 9000 tokens does not fit max_len 8192"})
    with pytest.raises(PromptTooLong, match="vanilla skipped it"):   # the runner records a skipped row
        decode(replaying, METHODS.get("pld")(target), PROMPTS[0], 8)
    with pytest.raises(UserError, match="lossy acceptance"):
        check_decoders({"medusa": METHODS.get("medusa")(target, checkpoint="random", acceptance="typical").turn_decoder()})


def test_published_claims_are_tested_on_replayed_cells_too(tmp_path):
    from tests.test_report import PLD, VANILLA, write_run

    def hass_like(r):
        lengths = r["choices"][0]["accept_lengths"]
        return dict(r, choices=[dict(r["choices"][0], accept_lengths=lengths[:-1] + [lengths[-1] + 2])])

    replayed = [dict(r, method="eagle2-replay", replayed=True) for r in PLD]
    replayed += [dict(hass_like(r), method="hass-replay", replayed=True) for r in PLD]
    run_dir = write_run(tmp_path / "claims", VANILLA + replayed)
    claims = (build([run_dir], tmp_path / "report") / "tables" / "claims.md").read_text()
    hass_line = next(line for line in claims.splitlines() if line.startswith("| HASS > EAGLE-2"))
    assert "(replayed)" in hass_line and "| reproduced |" in hass_line


def test_own_text_replay_of_a_real_t1_run_matches_it_step_for_step(tiny_dir, tmp_path):
    """benchmarks/own_text_replay.py's path: pld's real T = 1 rows become the baseline of a replay run, whose
    pld-replay rows must carry the real rows' accept lengths (validate_replay.py's comparison)."""
    own, validate_replay = load_benchmark("own_text_replay"), load_benchmark("validate_replay")
    real_dir = runner.run(tiny_plan(tiny_dir, tmp_path / "real", "tiny-words", max_new_tokens=24,
                                    temperatures=(1.0,)), argv=["real"])
    assert own.own_flags(["--checkpoint", "pld=a", "--checkpoint", "hass=b", "--limit", "3"], "pld") == [
        "--checkpoint", "pld=a", "--limit", "3"]
    own.copy_as_baseline(real_dir, tmp_path / "own" / "pld", "pld")
    replay_dir = runner.run(tiny_plan(tiny_dir, tmp_path / "own" / "pld", "tiny-words", max_new_tokens=24,
                                      temperatures=(1.0,), replay=True), argv=["replay"])
    real = read_rows(answer_file(real_dir, "tiny-words", "pld", 1.0))
    counts, notes = validate_replay.compare(real, read_rows(answer_file(replay_dir, "tiny-words", "pld-replay", 1.0)),
                                            read_rows(answer_file(replay_dir, "tiny-words", "vanilla", 1.0)))
    assert notes == [] and counts["same_questions"] == counts["questions"] == len(real) > 0
    assert counts["real_kept_vanilla"] == counts["questions"] and counts["steps"] > len(real)
