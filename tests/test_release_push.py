"""camelid release --push against an in-memory Hub (HfApi's methods, the Hub's branch semantics), and the
real HfApi against an unreachable endpoint."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_release import STORIES, build, stories_rows

from camelid.checkpoint.output import write_manifest
from camelid.errors import CamelidError
from camelid.release.push import git_blob_sha1, push_release


@dataclass
class _File:  # what HfApi.list_repo_tree yields for a regular (non-LFS) file
    path: str
    blob_id: str
    lfs: None = None


def _response(status: int, route: str):
    import httpx

    return httpx.Response(status, request=httpx.Request("GET", f"https://huggingface.co/api/{route}"))


class FakeHub:
    """Repo -> branch -> {path: bytes}. A new branch starts from main's files (Hub `create_branch`);
    `upload_folder` to a missing branch fails as the Hub's does (RevisionNotFound)."""

    def __init__(self, refuse_token: bool = False):
        self.branches: dict[str, dict[str, bytes]] = {}
        self.calls: list[tuple] = []
        self.refuse_token = refuse_token

    def whoami(self):
        if self.refuse_token:
            from huggingface_hub.errors import HfHubHTTPError

            raise HfHubHTTPError("401 Unauthorized", response=_response(401, "whoami-v2"))
        return {"name": "tester"}

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id))
        self.branches.setdefault("main", {".gitattributes": b"*.safetensors filter=lfs\n"})

    def create_branch(self, repo_id, branch, exist_ok=False):
        self.calls.append(("create_branch", branch))
        self.branches.setdefault(branch, dict(self.branches["main"]))

    def list_repo_tree(self, repo_id, revision, recursive=False):
        from huggingface_hub.errors import RevisionNotFoundError

        if revision not in self.branches:
            raise RevisionNotFoundError(f"{revision} not found", response=_response(404, f"tree/{revision}"))
        for path, data in self.branches[revision].items():
            import hashlib

            yield _File(path, hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest())

    def upload_folder(self, repo_id, folder_path, revision, commit_message, delete_patterns=()):
        if revision not in self.branches:
            raise AssertionError(f"upload to missing branch {revision}")
        self.calls.append(("upload_folder", revision))
        files = self.branches[revision]
        for pattern in delete_patterns:
            for path in [p for p in files if Path(p).match(pattern)]:
                del files[path]
        for p in Path(folder_path).iterdir():
            files[p.name] = p.read_bytes()

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id, revision, commit_message):
        self.calls.append(("upload_file", revision, path_in_repo))
        self.branches[revision][path_in_repo] = Path(path_or_fileobj).read_bytes()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("push")
    out = root / "rel"
    build(out, stories_rows(root))
    return out


def test_push_creates_branches_then_uploads_and_resumes(release):
    hub = FakeHub()
    result = push_release(release, "me/stories-GPTQ", api=hub)
    branches = list(json.loads((release / "release.json").read_text())["branches"])
    assert result["pushed"] == branches and result["skipped"] == []
    kinds = [c[0] for c in hub.calls]
    assert kinds.index("upload_folder") > max(i for i, k in enumerate(kinds) if k == "create_branch")
    for b in branches:
        local = {p.name: p.read_bytes() for p in (release / b).iterdir()}
        remote = {k: v for k, v in hub.branches[b].items() if k != ".gitattributes"}
        assert remote == local  # the card and plot on every branch, no stale files
    assert git_blob_sha1(release / "main" / "README.md") == next(
        f.blob_id for f in hub.list_repo_tree("x", "main") if f.path == "README.md")

    hub.calls.clear()  # rerun: nothing to upload
    assert push_release(release, "me/stories-GPTQ", api=hub)["skipped"] == branches
    assert not [c for c in hub.calls if c[0] == "upload_folder"]

    changed = branches[1]  # one branch changes locally: only it is uploaded again
    (release / changed / "quant_log.csv").write_text("layer,module\n")
    write_manifest(release / changed)
    hub.calls.clear()
    assert push_release(release, "me/stories-GPTQ", api=hub)["pushed"] == [changed]


def test_push_refused_token_uploads_nothing(release):
    hub = FakeHub(refuse_token=True)
    with pytest.raises(CamelidError, match="refused the token.*401"):
        push_release(release, "me/stories-GPTQ", api=hub)
    assert hub.calls == []


def test_push_offline_is_a_clear_error(release, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    api = HfApi(endpoint="http://127.0.0.1:9", token="hf_fake")  # port 9 (discard): connection refused
    with pytest.raises(CamelidError, match="cannot reach the Hugging Face Hub"):
        push_release(release, "me/stories-GPTQ", api=api)


def test_push_refuses_damaged_release(release, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(release, copy)
    (copy / "main" / "config.json").write_text("{}")
    with pytest.raises(Exception, match="SHA-256 mismatch"):
        push_release(copy, "me/x", api=FakeHub())
    assert STORIES.is_dir()
