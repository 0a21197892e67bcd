"""``brainstacks serve``: the OpenAI API over a tiny run, driven by the real ``openai`` client.

One in-process server (uvicorn on a thread, 127.0.0.1, a free port) serves most tests; the
continuous-batching tests drive the engine directly in float64, where a batch and a lone request
agree to ~1e-16 and greedy tokens must match exactly; SIGTERM is tested on a subprocess server.
"""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import torch
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from test_inference import set_bias, write_run

from brainstacks_pl import commands, inference_cli
from brainstacks_pl.inference import RoutedGenerator
from brainstacks_pl.serve.app import ServeSettings, create_app
from brainstacks_pl.serve.engine import BatchEngine
from brainstacks_pl.serve.jobs import Job, QueueFull, Route, Sampling
from brainstacks_pl.serve.server import api_keys, bind, launch
from brainstacks_pl.serve.text import TextStream

PROMPT = "Compute 12 times 7."
NAME = "run"  # write_run's directory name: the served model name


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test pin
    return write_run(tmp_path_factory.mktemp("serve"))


@contextmanager
def serving(generator: RoutedGenerator, engine_type: type[BatchEngine] = BatchEngine, **settings):
    """An in-process server on 127.0.0.1:<free port>; yields (openai client, engine, base URL)."""
    limits = {k: settings.pop(k) for k in ("max_batch", "max_queue", "fetch_domain") if k in settings}
    engine = engine_type(generator, **limits)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine, ServeSettings(NAME, **settings)), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server thread died at startup"
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30), engine, url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(run_dir):
    with serving(RoutedGenerator.from_run(run_dir), max_tokens=64) as (client, engine, url):
        yield client, engine, url


@pytest.fixture(scope="module")
def reference(run_dir) -> RoutedGenerator:
    """What ``brainstacks generate`` runs, loaded separately from the server's copy."""
    return RoutedGenerator.from_run(run_dir)


def http(url: str, data: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a raw request: for what the typed client cannot send."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def scrape(url: str, key: str | None = None) -> dict[tuple, float]:
    """``GET /metrics`` as {(sample name, sorted labels): value}."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(f"{url}/metrics", headers=headers), timeout=30) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def moved(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def chat(client, model=NAME, prompt=PROMPT, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kwargs)


# --------------------------------------------------------------------------- answers


def test_models_and_health(server):
    client, _, _ = server
    ids = [m.id for m in client.models.list()]
    assert ids == [
        NAME,
        f"{NAME}:routed",
        f"{NAME}:ungated",
        f"{NAME}:base",
        f"{NAME}:chat",
        f"{NAME}:code",
        f"{NAME}:math",
    ]
    status, health = http(server[2] + "/health")
    assert status == 200 and health["status"] == "ok" and health["max_batch"] == 16 and health["waiting"] == 0


@pytest.mark.parametrize("suffix, mode", [("", "routed"), (":base", "base"), (":ungated", "ungated")])
def test_greedy_answers_equal_brainstacks_generate(server, reference, suffix, mode):
    client, _, _ = server
    expected = reference.generate([PROMPT], mode, max_new_tokens=12)[0]
    reply = chat(client, NAME + suffix, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.completion_tokens == len(expected.tokens) and reply.usage.prompt_tokens == len(
        reference.encode(PROMPT)
    )
    assert reply.choices[0].finish_reason == ("length" if len(expected.tokens) == 12 else "stop")
    stream = client.completions.create(model=NAME + suffix, prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    chunks = list(stream)
    assert (
        "".join(c.choices[0].text for c in chunks) == expected.text and chunks[-1].choices[0].finish_reason is not None
    )
    info = reply.brainstacks
    assert chunks[0].brainstacks == chunks[-1].brainstacks == info and all(
        "brainstacks" not in c.model_extra for c in chunks[1:-1]
    )
    if mode == "routed":
        assert info["router_probs"] == pytest.approx(expected.route.probs, abs=1e-5)
        assert {s["domain"]: s["weight"] for s in info["stacks"]} == pytest.approx(
            {d: expected.route.weights[d] for d in expected.route.selected}, abs=1e-5
        )
    else:
        assert info["mode"] == mode and len(info["stacks"]) == (3 if mode == "ungated" else 0)


def test_the_generate_command_prints_what_the_server_answers(server, run_dir):
    client, _, _ = server
    out = io.StringIO()
    assert (
        inference_cli.main(
            [
                "generate",
                "--run",
                str(run_dir),
                "--prompt",
                PROMPT,
                "--max_new_tokens",
                "8",
                "--temperature",
                "0.9",
                "--seed",
                "5",
            ],
            stdout=out,
        )
        == 0
    )
    printed = out.getvalue().split("\n", 2)[2].removesuffix("\n")  # after the two route lines
    for stream in (False, True):
        reply = chat(client, max_tokens=8, temperature=0.9, seed=5, stream=stream)
        text = (
            "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
            if stream
            else reply.choices[0].message.content
        )
        assert text == printed, f"stream={stream}"


def test_pinned_domains_and_capability_gap_are_reported(server, reference):
    client, engine, _ = server
    reply = chat(client, f"{NAME}:math+code", max_tokens=4, temperature=0)
    assert reply.brainstacks == {
        "mode": "pinned",
        "stacks": [{"domain": "code", "weight": 1.0, "rounds": [0]}, {"domain": "math", "weight": 1.0, "rounds": [0]}],
        "capability_gap": False,
    }
    router = engine.generator.router
    saved = {k: v.clone() for k, v in router.state_dict().items()}
    set_bias(engine.generator, [-30.0, -30.0, -30.0])  # the server is idle: no request reads the router now
    before = scrape(server[2])
    try:
        reply = chat(client, max_tokens=6, temperature=0)
    finally:
        router.load_state_dict(saved)
    assert reply.brainstacks["capability_gap"] and reply.brainstacks["stacks"] == []
    assert moved(before, scrape(server[2]), "brainstacks_capability_gaps_total") == 1
    assert reply.choices[0].message.content == reference.generate([PROMPT], "base", max_new_tokens=6)[0].text


def test_stop_strings_end_the_answer_before_them(server, reference):
    client, _, _ = server
    text = reference.generate([PROMPT], "base", max_new_tokens=16)[0].text
    cut = next(i for i, ch in enumerate(text) if i > 0 and ch.isascii() and ch.isprintable())
    stop = text[cut]
    expected = text[: text.index(stop)]
    reply = chat(client, f"{NAME}:base", max_tokens=16, temperature=0, stop=[stop, "never-seen"])
    assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"
    chunks = list(
        client.completions.create(
            model=f"{NAME}:base", prompt=PROMPT, max_tokens=16, temperature=0, stop=stop, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == expected and chunks[-1].choices[0].finish_reason == "stop"


def test_text_stream_holds_back_partial_characters_and_stop_prefixes():
    def decode(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    plain = TextStream(decode)
    assert [plain.feed(b) for b in "a€b".encode()] == ["a", "", "", "€", "b"], (
        "the euro sign's 3 bytes come out as one character"
    )
    stopped = TextStream(decode, stops=["END", "Q"])
    assert [stopped.feed(b) for b in b"xEN"] == ["", "", "x"] and stopped.feed(ord("D")) == "" and stopped.stopped
    assert stopped.text == "x" and stopped.flush() == ""
    near_miss = TextStream(decode, stops=["END"])
    assert "".join(near_miss.feed(b) for b in b"xENO") + near_miss.flush() == "xENO" and not near_miss.stopped


def test_n_choices_share_the_prompt_and_sum_their_tokens(server):
    client, _, _ = server
    one = chat(client, max_tokens=8, temperature=0)
    three = chat(client, max_tokens=8, temperature=0, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}, "greedy: all identical"
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    seeded = chat(client, max_tokens=8, temperature=0.9, seed=5, n=2)
    assert [c.message.content for c in seeded.choices] == [
        chat(client, max_tokens=8, temperature=0.9, seed=seed).choices[0].message.content for seed in (5, 6)
    ], "choice i draws from seed + i"
    stream = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=8, temperature=0, n=2, stream=True)
    texts, finished = ["", ""], []
    for c in stream:
        texts[c.choices[0].index] += c.choices[0].text
        finished += [c.choices[0].index] if c.choices[0].finish_reason else []
    assert texts == [one.choices[0].message.content] * 2 and sorted(finished) == [0, 1]


def test_metrics_count_a_request(server):
    client, engine, url = server
    before = scrape(url)
    reply = chat(client, max_tokens=5, temperature=0)
    _wait(lambda: engine.stats()["running"] == 0, "the engine to drop the finished row")  # it may reply first
    after = scrape(url)
    usage, route = reply.usage, "/v1/chat/completions"
    assert moved(before, after, "brainstacks_http_requests_total", route=route, status="200") == 1
    assert moved(before, after, "brainstacks_prompt_tokens_total") == usage.prompt_tokens
    assert moved(before, after, "brainstacks_completion_tokens_total") == usage.completion_tokens
    assert moved(before, after, "brainstacks_time_to_first_token_seconds_count") == 1
    assert moved(before, after, "brainstacks_inter_token_latency_seconds_count") == usage.completion_tokens - 1
    assert moved(before, after, "brainstacks_requests_ended_total", reason=reply.choices[0].finish_reason) == 1
    for stack in reply.brainstacks["stacks"]:
        assert moved(before, after, "brainstacks_router_decisions_total", domain=stack["domain"]) == 1
    assert after[("brainstacks_queue_depth", ())] == 0 and after[("brainstacks_running_batch_size", ())] == 0
    assert after[("brainstacks_stack_cache_loads_total", ())] >= len(reply.brainstacks["stacks"]) > 0
    http(f"{url}/v1/nowhere")
    assert moved(after, scrape(url), "brainstacks_http_requests_total", route="other", status="404") == 1


# --------------------------------------------------------------------------- bad requests


def test_bad_requests_get_400_in_openai_error_shape(server):
    client, _, _ = server
    cases = {
        "model": dict(model="other-model", messages=[{"role": "user", "content": "hi"}]),
        "messages": dict(model=NAME, messages=[]),
        "max_tokens": dict(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens="5"),
        "temperature": dict(model=NAME, messages=[{"role": "user", "content": "hi"}], temperature="hot"),
        "messages.0.content": dict(model=NAME, messages=[{"role": "user", "content": 7}]),
        "messages.0.role": dict(model=NAME, messages=[{"role": "robot", "content": "hi"}]),
        "foo": dict(model=NAME, messages=[{"role": "user", "content": "hi"}], extra_body={"foo": 1}),
        "n": dict(model=NAME, messages=[{"role": "user", "content": "hi"}], n=17),
    }
    for param, kwargs in cases.items():
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(**kwargs)
        body = err.value.body
        assert err.value.status_code == 400 and body["type"] == "invalid_request_error" and body["param"] == param, (
            param,
            body,
        )
        assert body["message"], param
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=f"{NAME}:legal", prompt="hi")
    assert err.value.body["code"] == "model_not_found" and "legal" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, prompt="x" * 10_000_000)
    assert err.value.body["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, prompt="x" * 300)  # the tiny model's context is 256 tokens
    assert err.value.body["code"] == "context_length_exceeded" and err.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="above this server's limit"):
        chat(client, max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="empty prompt"):
        client.completions.create(model=NAME, prompt="  ")


def test_malformed_json_and_unknown_paths(server):
    url = server[2]
    status, body = http(f"{url}/v1/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = http(f"{url}/v1/completions", b'["a list"]')
    assert status == 400 and "JSON object" in body["error"]["message"]
    status, body = http(f"{url}/v1/embeddings")
    assert status == 404 and body["error"]["code"] == "not_found"


# --------------------------------------------------------------------------- limits


def test_full_queue_is_429_and_a_request_past_its_timeout_is_504(run_dir):
    gate = threading.Event()
    generator = RoutedGenerator.from_run(run_dir)

    def slow_math(domain):  # math's stack files "take forever" to read
        if domain == "math":
            gate.wait(30)
        engine.load_into_cache(domain)

    with serving(generator, max_batch=1, max_queue=1, fetch_domain=slow_math, request_timeout=1.0) as (
        client,
        engine,
        _,
    ):
        waiting: list = []
        thread = threading.Thread(
            target=lambda: waiting.append(_status(lambda: chat(client, f"{NAME}:math", max_tokens=2)))
        )
        thread.start()
        while engine.stats()["waiting"] < 1:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as err:
            chat(client, f"{NAME}:base", max_tokens=2)
        assert err.value.status_code == 429 and err.value.body["code"] == "rate_limit_exceeded"
        thread.join(30)
        gate.set()
        assert waiting == [504]


def _status(call) -> int:
    try:
        call()
    except openai.APIStatusError as err:
        return err.status_code
    return 200


# --------------------------------------------------------------------------- API keys


def test_with_api_keys_every_route_but_health_needs_one(run_dir):
    with serving(RoutedGenerator.from_run(run_dir), api_keys=("k1", "k2")) as (client, _, url):
        for call in (lambda c: c.models.list(), lambda c: chat(c, max_tokens=2)):
            with pytest.raises(openai.AuthenticationError) as err:
                call(client)  # api_key="unused"
            assert err.value.status_code == 401
            assert err.value.body == {
                "message": err.value.body["message"],
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        assert [m.id for m in client.with_options(api_key="k2").models.list()][0] == NAME
        assert chat(client.with_options(api_key="k1"), max_tokens=2).usage.completion_tokens >= 1
        assert http(f"{url}/health")[0] == 200
        assert http(f"{url}/metrics")[0] == 401
        assert moved({}, scrape(url, key="k1"), "brainstacks_http_requests_total", route="/metrics", status="401") == 1
        assert http(f"{url}/v1/embeddings")[0] == 401, "unknown paths are no way around the key"


def test_api_keys_come_from_the_flag_and_the_environment(monkeypatch):
    args = commands.build_parser().parse_args(["serve", "--run", "r", "--api_key", "a,b", "--api_key", " c "])
    monkeypatch.delenv("BRAINSTACKS_API_KEYS", raising=False)
    assert api_keys(args) == ("a", "b", "c")
    monkeypatch.setenv("BRAINSTACKS_API_KEYS", "d,,a")
    assert api_keys(args) == ("a", "b", "c", "d")


def test_an_open_server_on_a_public_interface_is_refused(run_dir, capsys, monkeypatch):
    monkeypatch.delenv("BRAINSTACKS_API_KEYS", raising=False)
    assert commands.main(["serve", "--run", str(run_dir), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host 0.0.0.0 is reachable") and err.count("\n") == 1
    assert "--allow_unauthenticated" in err


class _SlowEngine(BatchEngine):
    """One decode step per 20 ms: a long answer is still decoding while the test acts."""

    def _step(self) -> None:
        time.sleep(0.02)
        super()._step()


def test_a_non_streaming_client_that_goes_away_cancels_its_request(run_dir):
    with serving(RoutedGenerator.from_run(run_dir), engine_type=_SlowEngine, max_tokens=200) as (_, engine, url):
        body = json.dumps({"model": NAME, "prompt": PROMPT, "max_tokens": 200, "temperature": 0}).encode()
        head = "POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as sock:
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            _wait(lambda: engine.tokens_out >= 3, "the first tokens")
        closed = time.monotonic()
        _wait(lambda: engine.stats()["running"] == 0, "the request to leave the batch", timeout=10)
        assert time.monotonic() - closed < 1.0 and engine.tokens_out < 50, "decoding stopped at the next steps"
        assert moved({}, scrape(url), "brainstacks_requests_ended_total", reason="cancelled") == 1


# --------------------------------------------------------------------------- continuous batching (engine, float64)


def _job(generator, prompt, route, max_tokens, emit=None) -> Job:
    events: list = []
    job = Job(prompt, generator.encode(prompt), route, Sampling(max_tokens), emit or events.append)
    return job


def _alone(generator, prompt, weights: dict[str, float], max_tokens) -> list[int]:
    """Reference: ``generation.generate`` on the prompt alone with its routing weights."""
    generator.load_domains([d for d, w in weights.items() if w > 0])
    row = torch.tensor([[weights.get(d, 0.0) for d in generator.stacks.domains]])
    with generator.stacks.routed(row):
        return generator.decode_batch([generator.encode(prompt)], max_tokens, 0.0, 0)[0]


def _wait(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_requests_join_at_the_next_step_and_leave_when_done_with_mixed_routes(run_dir):
    generator = RoutedGenerator.from_run(run_dir, dtype="float64")
    engine = BatchEngine(generator, trace_steps=64)
    third_token, submitted = threading.Event(), threading.Event()

    def pause_after_three(event):  # runs on the engine thread: holds it until B and C are queued
        if event[0] == "token" and len(a.tokens) == 3:
            third_token.set()
            submitted.wait(30)

    a = _job(generator, PROMPT, Route("routed"), 20, pause_after_three)
    b = _job(generator, "def add(a, b):", Route("pinned", ("code",)), 4)
    c = _job(generator, "hello there, how are you", Route("base"), 6)
    engine.start()
    try:
        engine.submit(a)
        assert third_token.wait(30)
        engine.submit(b)
        engine.submit(c)
        submitted.set()
        _wait(lambda: a.finished and b.finished and c.finished, "three requests")
    finally:
        engine.close(10)
    trace = list(engine.trace)
    assert trace[:3] == [(a.id,), (a.id,), (a.id, b.id, c.id)], "B and C join together at the step after they arrive"
    assert {b.id, c.id}.isdisjoint(trace[-1]) and a.id in trace[-1], "finished requests leave, the long one goes on"
    assert len({row for step in trace for row in step}) == 3 and a.info.weights.keys() != b.info.weights.keys()
    for job in (a, b, c):
        assert job.tokens == _alone(generator, job.prompt, job.info.weights, job.sampling.max_tokens), job.route


def test_a_request_waiting_for_its_stacks_does_not_stall_the_batch(run_dir):
    generator = RoutedGenerator.from_run(run_dir, dtype="float64")
    gate = threading.Event()
    engine = BatchEngine(generator)
    engine.fetch_domain = lambda d: (gate.wait(30) if d == "math" else None, engine.load_into_cache(d))
    slow = _job(generator, PROMPT, Route("pinned", ("math",)), 5)
    fast = _job(generator, "def add(a, b):", Route("pinned", ("code",)), 8)
    engine.start()
    try:
        engine.submit(slow)
        engine.submit(fast)
        _wait(lambda: fast.finished, "the request whose stacks are in memory")
        assert slow.tokens == [] and not slow.finished and engine.stats()["waiting"] == 1
        gate.set()
        _wait(lambda: slow.finished, "the request whose stacks were loading")
    finally:
        gate.set()
        engine.close(10)
    assert slow.tokens == _alone(generator, slow.prompt, {"math": 1.0}, 5)
    assert fast.tokens == _alone(generator, fast.prompt, {"code": 1.0}, 8)


def test_a_stack_that_cannot_be_loaded_fails_only_the_requests_that_need_it(run_dir):
    generator = RoutedGenerator.from_run(run_dir)
    engine = BatchEngine(generator)

    def broken_math(domain):
        if domain == "math":
            raise OSError("disk on fire")
        engine.load_into_cache(domain)

    engine.fetch_domain = broken_math
    events: list = []
    doomed = _job(generator, PROMPT, Route("pinned", ("math",)), 3, events.append)
    fine = _job(generator, PROMPT, Route("pinned", ("code",)), 3)
    engine.start()
    try:
        engine.submit(doomed)
        engine.submit(fine)
        _wait(lambda: doomed.finished and fine.finished, "both requests")
    finally:
        engine.close(10)
    assert events[-1][0] == "end" and "disk on fire" in events[-1][1] and events[-1][1].startswith("error: ")
    assert doomed.tokens == [] and len(fine.tokens) > 0


def test_engine_bounds_the_queue(run_dir):
    engine = BatchEngine(
        RoutedGenerator.from_run(run_dir), max_batch=1, max_queue=2
    )  # not started: nothing leaves the queue
    for _ in range(2):
        engine.submit(_job(engine.generator, "hi", Route("base"), 1))
    with pytest.raises(QueueFull, match="limit 2"):
        engine.submit(_job(engine.generator, "hi", Route("base"), 1))


# --------------------------------------------------------------------------- the command


def test_serve_command_user_errors(run_dir, capsys):
    taken = bind("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        assert commands.main(["serve", "--run", str(run_dir), "--port", port]) == 2
        assert re.search(rf"error: cannot listen on 127.0.0.1:{port}", capsys.readouterr().err)
    finally:
        taken.close()
    assert commands.main(["serve", "--run", str(run_dir), "--max_batch", "0"]) == 2
    assert "--max_batch must be >= 1" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_sigterm_lets_the_request_in_flight_finish_then_exits_zero(run_dir, reference):
    threads = str(torch.get_num_threads())  # the reference below computes with the same thread count
    proc, url, log = launch(run_dir, ["--threads", threads, "--max_tokens", "200"])
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        options = {"include_usage": True}
        stream = client.completions.create(
            model=NAME, prompt=PROMPT, max_tokens=200, temperature=0, stream=True, stream_options=options
        )
        chunks = [next(stream)]
        proc.send_signal(signal.SIGTERM)
        chunks += list(stream)
        assert proc.wait(60) == 0
        log += proc.stderr.readlines()
    finally:
        proc.kill()
        proc.stderr.close()
    expected = reference.generate([PROMPT], max_new_tokens=200)[0]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    assert chunks[-1].usage.completion_tokens == len(expected.tokens) > 100, "the whole answer arrived after SIGTERM"
    assert "Waiting for connections to close" in "".join(log), "the request was still in flight at SIGTERM"
