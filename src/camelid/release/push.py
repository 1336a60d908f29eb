"""Publish a local release to the Hub: one branch per variant, the card on every branch.

huggingface_hub's `upload_folder(revision=...)` does not create a missing branch (huggingface_hub
issues #2602, #3292), so every branch is created first, all from the repo's initial commit, then each
folder is uploaded to its branch. A branch whose remote files already match the local ones (git blob
SHA-1 for regular files, SHA-256 for LFS files) is skipped, so an interrupted push is simply rerun.
This is the only code of camelid.release that touches the network.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from camelid.checkpoint.output import MANIFEST, sha256_file, verify_manifest
from camelid.errors import CamelidError
from camelid.release.build import read_release
from camelid.release.card import CARD_FILES


def git_blob_sha1(path: Path) -> str:
    """The id git (and the Hub's tree listing) gives a file: sha1 of 'blob <size>\\0' + content."""
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def check_access(api, repo_id: str) -> None:
    """Fail before anything is uploaded when the Hub cannot be reached or the token is not accepted."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    try:
        api.whoami()
    except OfflineModeIsEnabled as e:
        raise CamelidError(f"cannot push to {repo_id}: huggingface_hub is in offline mode (HF_HUB_OFFLINE)") from e
    except LocalTokenNotFoundError as e:
        raise CamelidError(f"cannot push to {repo_id}: not logged in (run `hf auth login` or set HF_TOKEN)") from e
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            raise CamelidError(f"cannot push to {repo_id}: the Hub refused the token (HTTP {status}); "
                               "log in with a write token (`hf auth login`)") from e
        raise CamelidError(f"cannot push to {repo_id}: the Hub answered HTTP {status} ({e})") from e
    except OSError as e:  # connection refused, DNS, timeouts (httpx errors are OSError-like or wrapped)
        raise CamelidError(f"cannot push to {repo_id}: cannot reach the Hugging Face Hub ({e})") from e
    except Exception as e:
        if type(e).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):  # transport errors
            raise CamelidError(f"cannot push to {repo_id}: cannot reach the Hugging Face Hub ({e})") from e
        raise


def remote_matches(api, repo_id: str, branch: str, folder: Path) -> bool:
    """Every local file is on the branch with the same content."""
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=branch, recursive=True)
                  if hasattr(f, "blob_id")}
    except (RevisionNotFoundError, EntryNotFoundError):
        return False
    sums = json.loads((folder / MANIFEST).read_text())
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        r = remote.get(path.name)
        if r is None:
            return False
        lfs = getattr(r, "lfs", None)
        if lfs is not None:
            if lfs.sha256 != sums.get(path.name, sha256_file(path)):
                return False
        elif r.blob_id != git_blob_sha1(path):
            return False
    return True


def push_release(out: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                 api=None) -> dict:
    """Upload every branch of the local release OUT to `repo_id`. Returns what was pushed and skipped."""
    out = Path(out)
    record = read_release(out)
    branches = list(record["branches"])
    for b in branches:  # a damaged local branch is an error before anything leaves the machine
        verify_manifest(out / b)
    api = _api(api, token)
    check_access(api, repo_id)
    return _push_branches(api, repo_id, out, branches, private)


def _api(api, token: str | None):
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    return api


def _push_branches(api, repo_id: str, out: Path, branches: list[str], private: bool) -> dict:
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    for b in branches:
        if b != "main":
            api.create_branch(repo_id, branch=b, exist_ok=True)
    pushed, skipped = [], []
    for b in branches:
        folder = out / b
        if _push_folder(api, repo_id, folder, b):
            pushed.append(b)
        else:
            skipped.append(b)
    if "main" not in branches:  # the card on main too, where visitors land
        first = out / branches[0]
        for name in CARD_FILES:
            api.upload_file(path_or_fileobj=str(first / name), path_in_repo=name, repo_id=repo_id,
                            revision="main", commit_message=f"camelid release: {name}")
    return {"repo_id": repo_id, "pushed": pushed, "skipped": skipped}


def _push_folder(api, repo_id: str, folder: Path, branch: str) -> bool:
    """Upload `folder` to `branch` unless the branch already holds exactly its files; whether it uploaded."""
    if remote_matches(api, repo_id, branch, folder):
        return False
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=branch,
                      commit_message=f"camelid release: {branch}",
                      delete_patterns=["*.safetensors", "*.safetensors.index.json", "*.gguf"])  # no stale weights
    return True


def push_repositories(out: str | Path, *, private: bool = False, token: str | None = None, api=None) -> list[dict]:
    """Upload each repository of a multi-format release (OUT/.camelid/siblings.json) to its own Hub repo:
    the GPTQ one branch by branch, AWQ, GGUF and fp16 to main. Every local folder is verified and the token
    checked before the first upload."""
    from camelid.checkpoint.jsonio import read_json
    from camelid.release.siblings import STATE

    out = Path(out)
    index = read_json(out / STATE / "siblings.json")
    sibs = index["siblings"]
    local = [s["repo"] for s in sibs if s["repo"].count("/") != 1]
    if local:
        raise CamelidError(f"cannot push {', '.join(local)}: not Hub ids; build the release with "
                           "--push OWNER/NAME (or --repo-id) so that each repository has one")
    for s in sibs:
        folder = out / s["folder"]
        if s["format"] == "gptq":
            for b in read_release(folder)["branches"]:
                verify_manifest(folder / b)
        else:
            verify_manifest(folder)
    api = _api(api, token)
    check_access(api, sibs[0]["repo"])
    results = []
    for s in sibs:
        folder = out / s["folder"]
        if s["format"] == "gptq":
            results.append(_push_branches(api, s["repo"], folder, list(read_release(folder)["branches"]), private))
        else:
            api.create_repo(s["repo"], private=private, exist_ok=True, repo_type="model")
            up = _push_folder(api, s["repo"], folder, "main")
            results.append({"repo_id": s["repo"], "pushed": ["main"] if up else [], "skipped": [] if up else ["main"]})
    return results
