"""A watching server: a repository that grows while it serves (a member-by-member build), and one that breaks."""

import asyncio
import json

import numpy as np
import pytest

from effx_serve.core.errors import UserError
from effx_serve.core.fs import write_atomic
from effx_serve.serve.backends.base import BackendUnavailable
from effx_serve.serve.http.app import create_app
from effx_serve.serve.server import manifest_signature
from tests.helpers import JPEG, build, make_server, measure_quickly, open_ready, ready_client


def _build(tiny_family, out, members, planned):
    """The repository of the tiny family's first `members` members, as a build of `planned` members writes it."""
    family, checkpoints = tiny_family
    some = out.parent / f"checkpoints-{members}"
    some.mkdir(exist_ok=True)
    for folder in sorted(checkpoints.iterdir())[:members]:
        (some / folder.name).symlink_to(folder)
    build((family, some), out, hardware_ids=("nvidia-h200",), partial_of=planned)


async def _until(http, path, check, timeout_s=60.0):
    """GET `path` until `check(json)` holds; its JSON."""
    for _ in range(int(timeout_s / 0.05)):
        body = (await http.get(path)).json()
        if check(body):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never got there: {body}")


def test_a_watching_server_serves_the_repository_as_it_grows_and_keeps_serving_when_it_breaks(tmp_path, tiny_family, monkeypatch):
    measure_quickly(monkeypatch)
    repository = tmp_path / "repository"
    _build(tiny_family, repository, members=1, planned=2)
    assert json.loads((repository / "manifest.json").read_text())["partial"] == {"members_planned": 2}
    asyncio.run(_grow_then_break(create_app(make_server(repository, watch_s=0.05)), repository, tiny_family))


async def _grow_then_break(app, repository, tiny_family):
    async with ready_client(app) as http:
        ready = (await http.get("/readyz")).json()
        assert ready["members"] == 1 and ready["building"] == "1 of 2 members so far; a build is adding the rest"
        models = (await http.get("/v1/models")).json()
        assert [m["name"] for m in models["members"]] == ["tiny-f-b0"] and models["building"] == ready["building"]

        _build(tiny_family, repository, members=2, planned=2)  # the build's last step: complete, no longer partial
        assert "partial" not in json.loads((repository / "manifest.json").read_text())
        models = await _until(http, "/v1/models", lambda body: len(body["members"]) == 2)
        assert models["building"] is None and "building" not in (await http.get("/readyz")).json()
        answer = (await http.post("/v1/classify", content=JPEG, headers={"content-type": "image/jpeg"}, params={"member": "tiny-f-b1"})).json()
        assert answer["member"] == "tiny-f-b1"  # the new member serves

        (repository / "tiny-f-b1" / "1" / "model.onnx").unlink()  # a repository broken by hand, then its manifest rewritten
        write_atomic(repository / "manifest.json", (repository / "manifest.json").read_text())
        ready = await _until(http, "/readyz", lambda body: "reload_error" in body)
        assert ready["status"] == "ready" and "tiny-f-b1/1/model.onnx is missing" in ready["reload_error"]
        response = await http.post("/v1/classify", content=JPEG, headers={"content-type": "image/jpeg"}, params={"member": "tiny-f-b1"})
        assert response.status_code == 200 and response.json()["member"] == "tiny-f-b1"  # the last good repository goes on


def test_a_retired_dispatcher_closes_only_once_its_requests_are_answered(served_repository):
    server = make_server(served_repository)
    member = server.catalog.members["tiny-f-b0"]
    batch = np.zeros((1, 3, member.resolution, member.resolution), np.float32)

    async def scenario():
        await server.dispatcher.start()
        with server.dispatcher.in_use():
            retiring = asyncio.create_task(server.dispatcher.retire(grace_s=30.0))
            await asyncio.sleep(0.1)
            assert not retiring.done()
            server.backend.run_now(member, batch)  # still serving the request in flight
        await asyncio.wait_for(retiring, 5.0)

    asyncio.run(scenario())
    with pytest.raises(BackendUnavailable):
        server.backend.run_now(member, batch)


def test_a_server_given_its_backend_cannot_reload(served_repository):
    from effx_serve.serve.backends.onnxruntime import OnnxRuntimeBackend

    server = make_server(served_repository, OnnxRuntimeBackend("cpu"))
    with pytest.raises(UserError, match="given its backend"):
        asyncio.run(server.reload())


def test_the_manifest_signature_changes_with_a_swapped_in_manifest(tmp_path):
    assert manifest_signature(tmp_path) is None
    write_atomic(tmp_path / "manifest.json", "{}")
    first = manifest_signature(tmp_path)
    write_atomic(tmp_path / "manifest.json", "{}")  # same bytes, a new file: a rebuilt repository
    assert first is not None and manifest_signature(tmp_path) != first


def test_requests_in_flight_during_reloads_are_all_answered(tmp_path, served_repository):
    import shutil

    repository = tmp_path / "repository"
    shutil.copytree(served_repository, repository)
    server = make_server(repository, watch_s=0.02)
    app = create_app(server)

    async def scenario():
        async with ready_client(app) as http:
            dispatchers = {id(server.dispatcher)}

            async def traffic():
                statuses = []
                while len(dispatchers) < 4:  # until three reloads have switched dispatchers
                    batch = [http.post("/v1/classify", content=JPEG, headers={"content-type": "image/jpeg"}) for _ in range(8)]
                    statuses += [r.status_code for r in await asyncio.gather(*batch)]
                    dispatchers.add(id(server.dispatcher))
                return statuses

            async def rebuilds():
                for _ in range(3):
                    before = id(server.dispatcher)
                    write_atomic(repository / "manifest.json", (repository / "manifest.json").read_text())  # a rebuilt repository
                    while id(server.dispatcher) == before:
                        await asyncio.sleep(0.01)

            statuses, _ = await asyncio.wait_for(asyncio.gather(traffic(), rebuilds()), 120)
            return statuses

    statuses = asyncio.run(scenario())
    assert statuses and set(statuses) == {200}, statuses  # none lost, none failed, across three switches


def test_start_up_objects_are_left_out_of_the_collectors_later_passes_and_every_pause_is_timed(served_repository):
    import gc

    server = make_server(served_repository)

    async def scenario():
        await open_ready(server)
        try:
            assert server._gc_timer in gc.callbacks  # every collection's pause in /metrics (effx_gc_pause_seconds)
            assert gc.get_freeze_count() > 0  # the modules, the members' sessions and what start-up built
            cycle = []
            cycle.append(cycle)  # what serving creates later is still collected
            del cycle
            assert gc.collect() >= 1
        finally:
            await server.close()
        assert server._gc_timer not in gc.callbacks

    try:
        asyncio.run(scenario())
    finally:
        gc.unfreeze()
