"""One client shared by forked processes and by threads: every answer reaches its caller."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading

import forkpool

CHILDREN = 8
THREADS = 16
CALLS = 200
DEADLINE = 60.0


def add_in_child(fp, child, start, answers):
    """In a forked child: many calls on the parent's client, each with arguments of its own,
    and what came back, for the parent to check."""
    start.wait(DEADLINE)  # all children call at once
    outcomes = []
    for i in range(CALLS):
        a = child * 1_000_000 + i
        try:
            outcomes.append((a + child, fp.run("add", a=a, b=child)["rows"][0]["sum"]))
        except forkpool.ForkpoolError as e:
            outcomes.append((a + child, repr(e)))
    answers.put((child, outcomes))


def in_forked_children(target, fp, count=CHILDREN):
    """Runs `target(fp, child, start, answers)` in `count` forked children, which wait at
    `start` to call at once and put `(child, what they got)` on `answers`; returns those
    as a dict, once every child exited 0."""
    fork = multiprocessing.get_context("fork")
    start = fork.Barrier(count)
    answers = fork.Queue()
    children = [fork.Process(target=target, args=(fp, child, start, answers))
                for child in range(count)]
    for child in children:
        child.start()
    received = dict(answers.get(timeout=DEADLINE) for _ in children)
    for child in children:
        child.join(DEADLINE)
        assert child.exitcode == 0
    return received


def test_a_client_used_in_the_parent_serves_eight_forked_children_at_once(service):
    fp = forkpool.Client(service.socket, timeout=2)
    assert fp.ping()["pid"] == service.pid  # the parent holds an open connection now
    received = in_forked_children(add_in_child, fp)
    for child in range(CHILDREN):
        wrong = [(want, got) for want, got in received[child] if want != got]
        assert not wrong, f"child {child}: {len(wrong)} wrong answers, e.g. {wrong[:3]}"
        assert len(received[child]) == CALLS
    # The children never wrote to the parent's socket: it still answers the parent alone.
    assert fp.run("add", a=40, b=2)["rows"] == [{"sum": 42}]
    assert fp.ping()["pid"] == service.pid
    fp.close()


def add_in_spawned_child(fp):
    return fp.run("add", a=os.getpid(), b=0)["rows"][0]["sum"] == os.getpid()


def test_a_client_pickles_to_its_settings_for_spawned_children(service):
    fp = forkpool.Client(service.socket, timeout=3, connect_timeout=1)
    fp.ping()
    copy = pickle.loads(pickle.dumps(fp))
    assert (copy.socket_path, copy.timeout, copy.connect_timeout) == (service.socket, 3, 1)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.map(add_in_spawned_child, [fp, fp], chunksize=1) == [True, True]
    fp.close()


def test_sixteen_threads_share_one_client_without_crossed_answers(service):
    fp = forkpool.Client(service.socket, timeout=20)
    start = threading.Barrier(THREADS)
    wrong = []
    finished = []

    def add_many(thread):
        start.wait(DEADLINE)
        for i in range(CALLS):
            a = thread * 1_000_000 + i
            try:
                got = fp.run("add", a=a, b=thread)["rows"][0]["sum"]
            except forkpool.ForkpoolError as e:
                got = repr(e)
            if got != a + thread:
                wrong.append((thread, a + thread, got))
        finished.append(thread)

    threads = [threading.Thread(target=add_many, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert sorted(finished) == list(range(THREADS))
    assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:3]}"
    fp.close()


def test_threads_pipelining_run_many_on_one_client_each_get_their_own_results(service):
    fp = forkpool.Client(service.socket, timeout=20)
    results = {}

    def batch(thread):
        results[thread] = fp.run_many([("add", {"a": thread, "b": i}) for i in range(500)])

    threads = [threading.Thread(target=batch, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    for thread in range(4):
        assert [r["rows"][0]["sum"] for r in results[thread]] == [thread + i for i in range(500)]
    fp.close()
