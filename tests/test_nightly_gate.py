"""The gate's decision on an adapter's measured report (align/gate.decide): what is
refused and why. The measurements themselves run in tests/test_nightly_e2e.py."""
from align.gate import GateConfig, decide


def test_the_gate_sees_replies_grow_past_the_sampling_cap():
    """Samples stop at the cap: a base whose replies end at 100 tokens and an adapter that
    runs to the 128-token cap every time differ by ×1.28 in mean length (within ×1.5),
    yet the adapter writes longer replies; the share cut at the cap tells."""
    config = GateConfig()
    reward = {"heldout_pairs": 4, "implicit_reward_accuracy": 0.75, "mean_h": 0.2,
              "policy_accuracy": 0.75, "base_accuracy": 0.5, "sign_test_p": 0.3}
    drift = {"kl_per_token": 0.1, "length_ratio": 128 / 100, "capped_share_adapter": 1.0,
             "capped_share_base": 0.0}
    publish, reasons = decide({"reward": reward, "drift": drift}, config)
    assert not publish and reasons == ["writes longer replies: 100% of its samples ran to the "
                                       "128-token cap against 0% of the base's"]
    drift.update(capped_share_adapter=2 / 6)                      # two more of six: allowed
    assert decide({"reward": reward, "drift": drift}, config) == (True, [])
    drift.update(capped_share_adapter=1.0, capped_share_base=1.0)  # both run long: can't tell
    assert decide({"reward": reward, "drift": drift}, config) == (True, [])


def test_an_export_that_moves_the_pairs_the_other_way_is_refused():
    """The gate judged the trained (PEFT) weights only: an export that flipped the update
    was published while its drift stayed small. The file's h on the pairs the weights
    move most must not go against theirs; a faithful weak adapter, whose file agrees in
    sign on only some pairs (llama.cpp's quantised arithmetic), is not refused for it."""
    from align.gate import published_report, strongest
    trained = [0.9, -0.05, 0.4, 1.3, 0.02, -0.7, 0.1]
    assert strongest(trained, 3) == [0, 3, 5]                  # the largest |h|
    config = GateConfig()
    reward = {"heldout_pairs": 7, "implicit_reward_accuracy": 0.71, "mean_h": 0.28,
              "policy_accuracy": 0.7, "base_accuracy": 0.6, "sign_test_p": 0.2}
    picked = [trained[i] for i in strongest(trained, 4)]

    def verdict(published):
        report = {"reward": dict(reward, published=published_report(picked, published)),
                  "drift": {"kl_per_token": 0.01, "length_ratio": 1.0}}
        return decide(report, config)
    assert verdict([h * 1.1 + 0.01 for h in picked]) == (True, [])
    noisy = [picked[0] * 0.7, -picked[1] * 0.2, picked[2] * 0.9, -picked[3] * 0.1]   # weak, faithful
    assert verdict(noisy) == (True, [])
    ok, reasons = verdict([-h for h in picked])                 # flipped
    assert not ok and any("export does not carry" in r for r in reasons), reasons

    # Beside the arithmetic's own noise (llama.cpp and torch disagreeing on the base
    # model's margins), only the pairs the weights move clearly more are checked: a
    # weak adapter's file cannot be told from a flipped one, and is not called broken.
    def report_with(published, noise):
        return decide({"reward": dict(reward, published=published_report(picked, published, noise)),
                       "drift": {"kl_per_token": 0.01, "length_ratio": 1.0}}, config)
    weak = published_report(picked, [-h for h in picked], noise_h=[1.8, -1.6, 2.0, 1.7])
    assert weak["checked"] == 0 and weak["slope"] is None and weak["noise_rms"] > 1.7
    assert report_with([-h for h in picked], [1.8, -1.6, 2.0, 1.7]) == (True, [])
    strong_noise = [0.15, -0.15, 0.15, 0.15]             # |h| ≥ 3 × its RMS on 3 of the 4
    assert published_report(picked, [-h for h in picked], strong_noise)["checked"] == 3
    ok, reasons = report_with([-h for h in picked], strong_noise)
    assert not ok and any("export does not carry" in r for r in reasons), reasons


def test_a_reply_ending_on_its_last_allowed_token_is_not_counted_as_cut():
    """A sample's length counted its end-of-turn token, and a reply that ended by itself
    exactly at the cap was counted among those the cap cut off (the share that refuses an
    adapter writing longer replies)."""
    import numpy as np
    from llama_cpp import Llama
    from align import gate
    from app.models import default_model_path
    llm = Llama(str(default_model_path()), n_ctx=512, n_threads=2, verbose=False, seed=1)
    try:
        prompt = gate.prompt_tokens(llm, [{"role": "user", "content": "Say hello."}])
        free, _, ended = gate._sample(llm, prompt, 200, 0.05, np.random.default_rng(0))
        assert ended and len(free) < 200
        at_cap, _, ended = gate._sample(llm, prompt, len(free), 0.05, np.random.default_rng(0))
        assert at_cap == free and ended                      # its last token ends it: not cut
        cut, _, ended = gate._sample(llm, prompt, len(free) - 1, 0.05, np.random.default_rng(0))
        assert cut == free[:-1] and not ended
    finally:
        llm.close()
