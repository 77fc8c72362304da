"""The context budget: what of a question, its frames and its history is sent, and the answer's token limit."""

from __future__ import annotations

import pytest

from visual_agent.context_budget import TokenCounter, fit_request
from visual_agent.errors import ErrorType, QuestionError


def fit(**kw):
    args = dict(context_tokens=512, base_tokens=50, frame_tokens=[20], turn_tokens=[], max_tokens=512,
                min_answer_tokens=16)
    args.update(kw)
    return fit_request(**args)


def test_fit_request_everything_fits():
    f = fit(frame_tokens=[20, 20, 20, 20], turn_tokens=[30, 30], max_tokens=64)
    assert (f.history_turns, f.frames, f.trimmed) == (2, (0, 1, 2, 3), {})
    assert f.prompt_tokens == 50 + 80 + 60 and f.max_tokens == 64


def test_fit_request_max_tokens_lowered_to_what_is_left():
    f = fit(context_tokens=256, base_tokens=100, frame_tokens=[40])
    assert f.max_tokens == 256 - 140 and f.trimmed == {}


def test_fit_request_history_newest_first_then_frames_oldest_dropped():
    # budget = 512 - 128 (a quarter kept for the answer) = 384; must = 40 + 20
    f = fit(base_tokens=40, frame_tokens=[20, 20, 20, 20], turn_tokens=[100, 100, 100, 100])
    assert f.history_turns == 3 and f.trimmed == {"history_turns": 1, "frames": 2}
    assert f.frames == (2, 3)  # the newest two
    assert f.prompt_tokens == 60 + 300 + 20 and f.max_tokens == 512 - 380


def test_fit_request_history_stops_at_the_first_turn_that_does_not_fit():
    f = fit(turn_tokens=[10, 400, 10])  # the middle turn is too long: the oldest is not sent past the gap
    assert f.history_turns == 1 and f.trimmed == {"history_turns": 2}


def test_fit_request_question_and_one_frame_always_go_and_the_floor_holds():
    f = fit(context_tokens=256, base_tokens=200, frame_tokens=[30, 30], turn_tokens=[5], min_answer_tokens=16)
    assert f.frames == (1,) and f.history_turns == 0 and f.max_tokens == 26
    assert f.trimmed == {"history_turns": 1, "frames": 1}


def test_fit_request_below_the_floor_is_context_exceeded_saying_what_to_change():
    with pytest.raises(QuestionError) as info:
        fit(context_tokens=256, base_tokens=230, frame_tokens=[20], min_answer_tokens=16)
    assert info.value.type is ErrorType.CONTEXT_EXCEEDED
    assert "256" in info.value.message and "--max-model-len" in info.value.message
    assert "agent.min_answer_tokens" in info.value.message


def test_fit_request_without_frames_is_text_only():
    """A request without pictures (a question about the past whose stored events have none) fits by its text."""
    fitted = fit(frame_tokens=[])
    assert fitted.frames == () and not fitted.trimmed
    with pytest.raises(QuestionError):
        fit(context_tokens=256, base_tokens=250, frame_tokens=[], min_answer_tokens=16)


def test_token_counter_estimates_err_high_before_learning():
    c = TokenCounter()
    assert c.text("x" * 300) >= (300 + 16) / 3
    assert c.frame(512) >= 512 // 8


def test_token_counter_configured_image_tokens_stay_and_text_rate_is_learned():
    c = TokenCounter(image_tokens=19)
    text = TokenCounter.text_bytes("a" * 184)  # 200 bytes with the template overhead
    c.observe(text, 2, 138)  # 100 text tokens + 2 x 19
    assert c.image_tokens == 19 and c.tokens_per_byte == pytest.approx(0.5)
    assert c.text("a" * 184) >= 100 and c.frame(512) >= 19


def test_token_counter_learns_both_rates_from_two_shapes():
    c = TokenCounter()
    truth = lambda b, n: round(0.6 * b + 19 * n)  # noqa: E731
    for b, n in [(300, 1), (900, 4), (500, 2), (1200, 1)]:
        c.observe(b, n, truth(b, n))
    assert c.tokens_per_byte == pytest.approx(0.6, rel=0.05)
    assert c.image_tokens == pytest.approx(19, rel=0.1)
    for b, n in [(300, 1), (2000, 4)]:  # estimates of new shapes are not below the truth
        assert c._raise(c.tokens_per_byte * b) + n * c.frame(512) >= truth(b, n)


def test_token_counter_one_shape_puts_the_rest_on_the_images():
    c = TokenCounter()
    c.observe(300, 1, 119)  # 100 text tokens at the default rate + 19
    assert c.image_tokens == pytest.approx(19)
    c2 = TokenCounter()
    c2.observe(300, 2, 60)  # fewer tokens than the default text rate alone: the text rate comes down
    assert c2.image_tokens == 1.0 and c2.tokens_per_byte == pytest.approx(58 / 300)


def test_fit_request_any_input_fits_or_says_context_exceeded():
    import random

    rng = random.Random(7)
    for _ in range(2000):
        context = rng.choice([256, 512, 4096])
        frames = [rng.randint(1, 700)] * rng.randint(1, 8)
        turns = [rng.randint(1, 900) for _ in range(rng.randint(0, 6))]
        args = dict(context_tokens=context, base_tokens=rng.randint(1, 600), frame_tokens=frames, turn_tokens=turns,
                    max_tokens=rng.choice([1, 16, 512, 4096]), min_answer_tokens=rng.choice([1, 16, 64]))
        try:
            f = fit_request(**args)
        except QuestionError as exc:
            assert exc.type is ErrorType.CONTEXT_EXCEEDED
            assert args["base_tokens"] + frames[-1] + args["min_answer_tokens"] > context
            continue
        assert f.frames[-1] == len(frames) - 1 and f.max_tokens >= args["min_answer_tokens"]
        assert f.prompt_tokens + min(f.max_tokens, args["max_tokens"]) <= context or f.max_tokens == args["min_answer_tokens"]
        assert f.prompt_tokens + args["min_answer_tokens"] <= context
        assert f.trimmed.get("frames", 0) == len(frames) - len(f.frames)
        assert f.trimmed.get("history_turns", 0) == len(turns) - f.history_turns


async def test_context_budget_minimal_plan_keeps_only_the_question_and_newest_frame():
    from visual_agent.context_budget import ContextBudget

    class Model:
        """A stand-in for a provider that only states its context length (the planner asks nothing else)."""
        class config:
            max_tokens = 512
            context_tokens = 4096
            image_tokens = None

        async def context_length(self):
            return 4096

        def image_tokens(self):
            return None

    budget = ContextBudget(Model(), min_answer_tokens=16)
    turns = [("q1", "a1"), ("q2", "a2")]
    full, _ = await budget.plan("system", "question?", 4, turns)
    assert full.trimmed == {} and full.frames == (0, 1, 2, 3) and full.history_turns == 2
    least, shape = await budget.plan("system", "question?", 4, turns, minimal=True)
    assert least.frames == (3,) and least.history_turns == 0 and shape.images == 1
    assert least.trimmed == {"history_turns": 2, "frames": 3} and least.max_tokens == 512
