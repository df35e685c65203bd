"""Commit and summary signatures against the real ``ostree``, ``gpg`` and ``gpgv`` (libostree 2022.7)."""

from __future__ import annotations

import ast
import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lanshare import gvariant
from lanshare.errors import SignatureError, UsageError
from lanshare.gvariant import Variant
from lanshare.ostree import signing
from lanshare.ostree.summary import SummaryRef, build_summary, parse_summary

if TYPE_CHECKING:  # imported by pytest as a plugin: importing it here first would defeat assert rewriting
    from tests.gpg_fixtures import GpgKeys


pytestmark = pytest.mark.needs("ostree")


def ostree(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the ostree CLI (the oracle)."""
    proc = subprocess.run(["ostree", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"ostree {' '.join(map(str, args))}: {proc.stderr}"
    return proc


def make_repo(path: Path) -> Path:
    ostree("init", f"--repo={path}", "--mode=archive")
    return path


def commit(repo: Path, tmp_path: Path, branch: str = "os/stable", *extra: str) -> str:
    """Commit a small tree with the ostree CLI and return the checksum."""
    tree = tmp_path / "tree"
    if not tree.exists():
        (tree / "usr" / "bin").mkdir(parents=True)
        (tree / "usr" / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
        (tree / "etc").mkdir()
        (tree / "etc" / "os-release").write_text("NAME=Test\n")
    proc = ostree("commit", f"--repo={repo}", f"--branch={branch}", "--subject=test", *extra, str(tree))
    return proc.stdout.strip()


def object_path(repo: Path, checksum: str, suffix: str) -> Path:
    return repo / "objects" / checksum[:2] / f"{checksum[2:]}.{suffix}"


def read_commit(repo: Path, checksum: str) -> tuple[bytes, dict[str, Variant]]:
    """The raw .commit bytes and the parsed .commitmeta, read straight from the files."""
    data = object_path(repo, checksum, "commit").read_bytes()
    meta_path = object_path(repo, checksum, "commitmeta")
    meta = signing.decode_signatures(meta_path.read_bytes()) if meta_path.exists() else {}
    return data, meta


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


# --- GPG ------------------------------------------------------------------------------------------


def test_ostree_gpg_signed_commit_verifies(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    """A commit signed by ``ostree commit --gpg-sign`` verifies, naming the key that signed."""
    repo = make_repo(tmp_path / "repo")
    key = gpg_keys.trusted
    checksum = commit(
        repo, tmp_path, "os/stable", f"--gpg-sign={key.key_id}", f"--gpg-homedir={gpg_keys.homedir}"
    )
    data, meta = read_commit(repo, checksum)
    assert list(meta) == [signing.GPG_KEY] and meta[signing.GPG_KEY].signature == "aay"

    result = signing.verify_commit_signatures(data, meta, gpg_keyring=key.keyring)
    assert result == signing.VerifiedSignature("gpg", key.key_id, key.fingerprint, key.fingerprint)


def test_unknown_key_is_rejected_with_its_key_id(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    """A signature by a key missing from the keyring is rejected, and the message names that key."""
    repo = make_repo(tmp_path / "repo")
    other = gpg_keys.other
    checksum = commit(
        repo, tmp_path, "os/stable", f"--gpg-sign={other.key_id}", f"--gpg-homedir={gpg_keys.homedir}"
    )
    data, meta = read_commit(repo, checksum)
    with pytest.raises(SignatureError) as info:
        signing.verify_commit_signatures(data, meta, gpg_keyring=gpg_keys.trusted.keyring, checksum=checksum)
    message = str(info.value)
    assert other.key_id in message and "not in the trusted keyring" in message
    assert checksum in message and str(gpg_keys.trusted.keyring) in message


def test_flipped_byte_in_commit_or_signature_is_rejected(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    """Tampering with the commit or the signature's cryptographic part fails verification."""
    # Not every byte of an OpenPGP signature is signed: the *unhashed* subpacket area (where gpg puts
    # the issuer key id) is malleable by design, so gpgv (and libostree) still accept a signature with
    # a flipped byte there.  Hence lanshare takes the key id from the verified fingerprint.  The
    # flips below hit the signature's MPIs (its tail) and its header.
    repo = make_repo(tmp_path / "repo")
    key = gpg_keys.trusted
    checksum = commit(
        repo, tmp_path, "os/stable", f"--gpg-sign={key.key_id}", f"--gpg-homedir={gpg_keys.homedir}"
    )
    data, meta = read_commit(repo, checksum)
    (sig,) = signing.signatures_of(meta, "gpg")

    with pytest.raises(SignatureError, match="BAD signature"):
        signing.verify_commit_signatures(flip(data, len(data) // 2), meta, gpg_keyring=key.keyring)
    for index in (len(sig) - 1, len(sig) - 20):
        bad = {signing.GPG_KEY: Variant("aay", [flip(sig, index)])}
        with pytest.raises(SignatureError, match="BAD signature"):
            signing.verify_commit_signatures(data, bad, gpg_keyring=key.keyring)
    for garbage in (flip(sig, 0), b"not a signature", sig[: len(sig) // 2]):
        with pytest.raises(SignatureError, match="GPG signature 1"):
            signing.verify_commit_signatures(
                data, {signing.GPG_KEY: Variant("aay", [garbage])}, gpg_keyring=key.keyring
            )

    # the unhashed issuer subpacket: still a valid signature, and the key id reported is the real one
    issuer = sig.index(b"\x09\x10" + bytes.fromhex(key.key_id))  # subpacket: length 9, type 16 (issuer)
    forged = {signing.GPG_KEY: Variant("aay", [flip(sig, issuer + 5)])}
    assert signing.verify_commit_signatures(data, forged, gpg_keyring=key.keyring).key_id == key.key_id


def test_expired_and_revoked_keys_are_rejected(tmp_path: Path) -> None:
    """gpgv says VALIDSIG but EXPKEYSIG/REVKEYSIG (no GOODSIG): rejected, as libostree rejects them."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)

    def gpg(*args: str, stdin: bytes = b"") -> bytes:
        argv = ["gpg", "--homedir", str(home), "--batch", *args]
        return subprocess.run(argv, input=stdin, capture_output=True, check=True).stdout

    def key_id(uid: str) -> str:
        listing = gpg("--with-colons", "--list-keys", uid).decode()
        return next(line.split(":")[4] for line in listing.splitlines() if line.startswith("pub:"))

    data = b"commit bytes"
    try:
        # a key that expired in 2020, with a signature made while it was valid
        past = ["--faked-system-time", "20200101T000000!"]
        gpg(*past, "--passphrase", "", "--quick-gen-key", "Old <old@example.com>", "ed25519", "sign", "1d")
        old = key_id("Old <old@example.com>")
        old_sig = gpg(*past, "--detach-sign", "--local-user", old, stdin=data)
        # a key revoked with the certificate gpg stored when it was made
        gpg("--passphrase", "", "--quick-gen-key", "Revoked <rev@example.com>", "ed25519", "sign", "never")
        revoked = key_id("Revoked <rev@example.com>")
        revoked_sig = signing.sign_gpg(data, revoked, home)
        (cert,) = (home / "openpgp-revocs.d").glob(f"*{revoked}.rev")
        # gpg prefixes the armor line with ":" so the certificate is not imported by accident
        (tmp_path / "rev.asc").write_text(cert.read_text().replace(":-----BEGIN", "-----BEGIN"))
        gpg("--import", str(tmp_path / "rev.asc"))
        keyring = signing.export_public_keyring(home, [old, revoked], tmp_path / "keyring.gpg")

        for sig, key, why in (
            (old_sig, old, "which has expired"),
            (revoked_sig, revoked, "which has been revoked"),
        ):
            meta = signing.add_signature({}, "gpg", sig)
            with pytest.raises(SignatureError, match=f"signature by key {key}, {why}"):
                signing.verify_commit_signatures(data, meta, gpg_keyring=keyring)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def test_any_valid_signature_is_enough(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    """With signatures by an unknown and a trusted key (a key rotation), the trusted one is reported."""
    repo = make_repo(tmp_path / "repo")
    checksum = commit(repo, tmp_path)
    data, _ = read_commit(repo, checksum)
    meta = signing.sign_metadata(
        data, gpg_key_ids=[gpg_keys.other.key_id, gpg_keys.trusted.key_id], gpg_homedir=gpg_keys.homedir
    )
    assert len(signing.signatures_of(meta, "gpg")) == 2
    result = signing.verify_commit_signatures(data, meta, gpg_keyring=gpg_keys.trusted.keyring)
    assert result.key_id == gpg_keys.trusted.key_id


def test_unsigned_and_unconfigured_are_explained(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    """No signature, no configured key, or a signature kind with no key: each says what to do."""
    data = b"commit bytes"
    with pytest.raises(SignatureError, match="is not signed"):
        signing.verify_commit_signatures(data, None, gpg_keyring=gpg_keys.trusted.keyring)
    with pytest.raises(SignatureError, match="no trusted key configured"):
        signing.verify_commit_signatures(data, {})
    meta = signing.add_signature({}, "gpg", signing.sign_gpg(data, gpg_keys.trusted.key_id, gpg_keys.homedir))
    with pytest.raises(SignatureError, match=r"no GPG keyring configured \(trust.gpg_keyring\)"):
        signing.verify_commit_signatures(data, meta, ed25519_keys=[signing.generate_ed25519_keypair()[0]])
    with pytest.raises(SignatureError, match="does not exist"):
        signing.verify_commit_signatures(data, meta, gpg_keyring=tmp_path / "missing.gpg")
    with pytest.raises(SignatureError, match="expected aay"):
        signing.verify_commit_signatures(data, {signing.GPG_KEY: Variant("s", "x")}, gpg_keyring=tmp_path)
    with pytest.raises(SignatureError, match="could not sign with key 0123456789ABCDEF"):
        signing.sign_gpg(data, "0123456789ABCDEF", gpg_keys.homedir)


def test_keyring_may_be_armored_or_a_directory(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    """Admins often have an ASCII-armored export or a trusted.gpg.d-style directory."""
    data = b"payload"
    meta = signing.add_signature({}, "gpg", signing.sign_gpg(data, gpg_keys.trusted.key_id, gpg_keys.homedir))
    armored = tmp_path / "keys.d" / "trusted.asc"
    armored.parent.mkdir()
    proc = subprocess.run(
        ["gpg", "--homedir", str(gpg_keys.homedir), "--armor", "--export", gpg_keys.trusted.key_id],
        capture_output=True,
        check=True,
    )
    armored.write_bytes(proc.stdout)
    shutil.copy(gpg_keys.other.keyring, armored.parent / "other.gpg")
    for keyring in (armored, armored.parent):
        assert (
            signing.verify_commit_signatures(data, meta, gpg_keyring=keyring).key_id
            == gpg_keys.trusted.key_id
        )


def _serve_pull(
    tmp_path: Path, source: Path, keyring: Path, ref: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """Pull ``ref`` from ``source`` into a fresh repo whose remote trusts only ``keyring``."""
    dest = make_repo(tmp_path / f"dest-{len(list(tmp_path.glob('dest-*')))}")
    ostree(
        "remote", "add", f"--repo={dest}", f"--gpg-import={keyring}", *options, "origin", f"file://{source}"
    )
    return ostree("pull", f"--repo={dest}", "origin", ref, check=False)


def test_ostree_pull_accepts_lanshare_gpg_signature(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    """``ostree pull`` (gpg-verify on) accepts a .commitmeta lanshare wrote, and rejects another key's."""
    source = make_repo(tmp_path / "source")
    checksum = commit(source, tmp_path)
    data, meta = read_commit(source, checksum)
    assert meta == {}  # ostree made it unsigned; lanshare signs it
    meta_path = object_path(source, checksum, "commitmeta")

    meta_path.write_bytes(signing.encode_signatures(signing.sign_metadata(
        data, gpg_key_ids=[gpg_keys.trusted.key_id], gpg_homedir=gpg_keys.homedir
    )))  # fmt: skip
    pulled = _serve_pull(tmp_path, source, gpg_keys.trusted.keyring, "os/stable")
    assert pulled.returncode == 0, pulled.stderr

    meta_path.write_bytes(signing.encode_signatures(signing.sign_metadata(
        data, gpg_key_ids=[gpg_keys.other.key_id], gpg_homedir=gpg_keys.homedir
    )))  # fmt: skip
    refused = _serve_pull(tmp_path, source, gpg_keys.trusted.keyring, "os/stable")
    assert refused.returncode != 0
    assert "public key not found" in refused.stderr or gpg_keys.other.key_id in refused.stderr


def test_ostree_pull_accepts_lanshare_summary_and_signature(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    """A summary built and signed by lanshare passes ``ostree pull`` with gpg-verify-summary=true."""
    source = make_repo(tmp_path / "source")
    checksum = commit(source, tmp_path, "os/stable", f"--gpg-sign={gpg_keys.trusted.key_id}",
                      f"--gpg-homedir={gpg_keys.homedir}")  # fmt: skip
    data, _ = read_commit(source, checksum)
    ref = SummaryRef("os/stable", checksum, len(data), timestamp=1_700_000_000)
    summary = build_summary([ref], last_modified=1_700_000_100)
    (source / "summary").write_bytes(summary)
    verify_summary = "--set=gpg-verify-summary=true"

    (source / "summary.sig").write_bytes(
        signing.sign_summary(summary, gpg_key_ids=[gpg_keys.trusted.key_id], gpg_homedir=gpg_keys.homedir)
    )
    result = signing.verify_summary_signature(
        summary, (source / "summary.sig").read_bytes(), gpg_keyring=gpg_keys.trusted.keyring
    )
    assert result.key_id == gpg_keys.trusted.key_id
    pulled = _serve_pull(tmp_path, source, gpg_keys.trusted.keyring, "os/stable", verify_summary)
    assert pulled.returncode == 0, pulled.stderr

    (source / "summary.sig").write_bytes(
        signing.sign_summary(summary, gpg_key_ids=[gpg_keys.other.key_id], gpg_homedir=gpg_keys.homedir)
    )
    refused = _serve_pull(tmp_path, source, gpg_keys.trusted.keyring, "os/stable", verify_summary)
    assert refused.returncode != 0
    with pytest.raises(SignatureError, match=gpg_keys.other.key_id):
        signing.verify_summary_signature(
            summary, (source / "summary.sig").read_bytes(), gpg_keyring=gpg_keys.trusted.keyring
        )


def test_ostree_signed_summary_verifies(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    """``ostree summary -u --gpg-sign`` writes a summary.sig lanshare verifies; a changed summary fails."""
    repo = make_repo(tmp_path / "repo")
    commit(repo, tmp_path)
    ostree("summary", f"--repo={repo}", "-u", f"--gpg-sign={gpg_keys.trusted.key_id}",
           f"--gpg-homedir={gpg_keys.homedir}")  # fmt: skip
    summary = (repo / "summary").read_bytes()
    sig = (repo / "summary.sig").read_bytes()
    assert list(gvariant.decode("a{sv}", sig)) == [signing.GPG_KEY]
    keyring = gpg_keys.trusted.keyring
    assert (
        signing.verify_summary_signature(summary, sig, gpg_keyring=keyring).key_id == gpg_keys.trusted.key_id
    )
    parsed = parse_summary(summary)
    tampered = build_summary(parsed.refs, last_modified=(parsed.last_modified or 0) + 1)
    with pytest.raises(SignatureError, match="BAD signature"):
        signing.verify_summary_signature(tampered, sig, gpg_keyring=keyring)
    with pytest.raises(SignatureError, match=r"no summary\.sig"):
        signing.verify_summary_signature(summary, None, gpg_keyring=keyring)
    with pytest.raises(SignatureError, match=r"summary\.sig is corrupt"):
        signing.verify_summary_signature(summary, sig[:-1] + b"\xff", gpg_keyring=keyring)


# --- ed25519 ------------------------------------------------------------------------------------------

# RFC 8032 section 7.1, test 1: libsodium's crypto_sign_detached is plain Ed25519, so these pin the format.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_ed25519_formats_match_libostree() -> None:
    """Keys and signatures in libostree's ed25519 formats (checked against ostree-sign-ed25519.c).

    Debian's ostree is built without libsodium ("Requested signature type is not implemented"), so the
    oracle here is libostree's source: the metadata key is ``ostree.sign.ed25519`` of type ``aay``; a
    public key is base64 of 32 bytes (``crypto_sign_PUBLICKEYBYTES``); a secret key base64 of 64
    bytes (``crypto_sign_SECRETKEYBYTES``: seed then public key); each signature is the 64 bytes of
    ``crypto_sign_detached`` over the raw commit bytes — standard Ed25519, as the RFC 8032 vector shows.
    """
    secret = b64(RFC8032_SEED + RFC8032_PUBLIC)
    assert signing.sign_ed25519(b"", secret) == RFC8032_SIGNATURE
    assert signing.sign_ed25519(b"", b64(RFC8032_SEED)) == RFC8032_SIGNATURE  # a bare seed works too
    assert signing.ed25519_public_key(secret) == b64(RFC8032_PUBLIC)
    meta = signing.add_signature({}, "ed25519", RFC8032_SIGNATURE)
    assert gvariant.encode("a{sv}", meta) == signing.encode_signatures(meta)
    assert gvariant.decode("a{sv}", signing.encode_signatures(meta)) == {
        "ostree.sign.ed25519": Variant("aay", [RFC8032_SIGNATURE])
    }
    assert signing.verify_commit_signatures(b"", meta, ed25519_keys=[b64(RFC8032_PUBLIC)]) == (
        signing.VerifiedSignature("ed25519", b64(RFC8032_PUBLIC))
    )

    public, secret = signing.generate_ed25519_keypair()
    raw = base64.b64decode(secret)
    assert len(raw) == 64 and raw[32:] == base64.b64decode(public)


def test_ed25519_round_trip_and_rejections(tmp_path: Path) -> None:
    """Sign/verify round trip; a wrong key, a flipped byte or a truncated signature is rejected."""
    public, secret = signing.generate_ed25519_keypair()
    other_public, _ = signing.generate_ed25519_keypair()
    data = b"commit object bytes" * 10
    meta = signing.add_signature(
        {"other.key": Variant("s", "kept")}, "ed25519", signing.sign_commit_ed25519(data, secret)
    )
    assert meta["other.key"] == Variant("s", "kept")
    assert signing.verify_commit_signatures(data, meta, ed25519_keys=[other_public, public]).key_id == public

    with pytest.raises(SignatureError, match="does not verify with any of the 1 trusted key"):
        signing.verify_commit_signatures(data, meta, ed25519_keys=[other_public])
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify_commit_signatures(flip(data, 3), meta, ed25519_keys=[public])
    (sig,) = signing.signatures_of(meta, "ed25519")
    for bad in (flip(sig, 0), flip(sig, 63)):
        with pytest.raises(SignatureError, match="does not verify"):
            signing.verify_commit_signatures(
                data, {signing.ED25519_KEY: Variant("aay", [bad])}, ed25519_keys=[public]
            )
    with pytest.raises(SignatureError, match="is corrupt"):
        signing.verify_commit_signatures(
            data, {signing.ED25519_KEY: Variant("aay", [sig[:-1]])}, ed25519_keys=[public]
        )
    with pytest.raises(SignatureError, match=r"no ed25519 key configured \(trust.ed25519_keys\)"):
        signing.verify_commit_signatures(data, meta, gpg_keyring=tmp_path / "unused.gpg")


def test_ed25519_secret_key_halves_must_match() -> None:
    """A 64-byte secret key whose public half is not its seed's is corrupt, not silently used."""
    _, secret = signing.generate_ed25519_keypair()
    other_public, _ = signing.generate_ed25519_keypair()
    mixed = b64(base64.b64decode(secret)[:32] + base64.b64decode(other_public))
    with pytest.raises(UsageError, match="not the public key of its seed"):
        signing.sign_ed25519(b"x", mixed)
    with pytest.raises(UsageError, match="decodes to 16 bytes"):
        signing.sign_ed25519(b"x", b64(bytes(16)))
    with pytest.raises(UsageError, match="decodes to 64 bytes; an ed25519 public key is 32"):
        signing.verify_commit_signatures(
            b"x", {signing.ED25519_KEY: Variant("aay", [bytes(64)])}, ed25519_keys=[secret]
        )


def test_ed25519_key_files(tmp_path: Path) -> None:
    """Key files hold one base64 key per line (blank lines ignored); a bad line is reported by file:line."""
    public, secret = signing.generate_ed25519_keypair()
    public2, _ = signing.generate_ed25519_keypair()
    keys = tmp_path / "trusted.ed25519"
    keys.write_text(f"\n{public}\n   \n{public2}  \n")
    assert signing.load_ed25519_keys(keys) == [public, public2]
    secret_file = tmp_path / "secret.ed25519"
    secret_file.write_text(secret + "\n")
    assert signing.load_ed25519_secret_key(secret_file) == secret

    bad = tmp_path / "bad.ed25519"
    bad.write_text(f"{public}\nnot-base64!\n")
    with pytest.raises(UsageError, match=re.escape(f"{bad}:2 is not valid base64")):
        signing.load_ed25519_keys(bad)
    bad.write_text(f"{public}\n\n{b64(bytes(20))}\n")
    with pytest.raises(UsageError, match=re.escape(f"{bad}:3: decodes to 20 bytes")):
        signing.load_ed25519_keys(bad)
    bad.write_text("\n\n")
    with pytest.raises(UsageError, match="holds no key"):
        signing.load_ed25519_keys(bad)
    with pytest.raises(UsageError, match="cannot read ed25519 key file"):
        signing.load_ed25519_keys(tmp_path / "missing")


def printed_bytestrings(text: str) -> list[bytes]:
    """Parse GLib's printing of a one-element ``aay``."""
    text = text.strip()
    if text.startswith("[[byte "):
        return [bytes(int(b, 16) for b in text[len("[[byte ") : -2].split(", "))]
    # GLib prints an ay that ends in its only NUL as a C-escaped bytestring, without that NUL
    assert text.startswith("[b") and text.endswith("]"), text
    value = ast.literal_eval(text[1:-1])
    assert isinstance(value, bytes)
    return [value + b"\0"]


def test_ostree_reads_lanshare_ed25519_commitmeta(tmp_path: Path) -> None:
    """ostree reads lanshare's ed25519 entry as an ``aay``, and verifies it where built with libsodium.

    Debian's build is not ("Requested signature type is not implemented"), so there only the layout is
    checked by ostree and the signature itself by the RFC 8032 vector above.
    """
    repo = make_repo(tmp_path / "repo")
    checksum = commit(repo, tmp_path)
    data, _ = read_commit(repo, checksum)
    public, secret = signing.generate_ed25519_keypair()
    sig = signing.sign_commit_ed25519(data, secret)
    object_path(repo, checksum, "commitmeta").write_bytes(
        signing.encode_signatures(signing.add_signature({}, "ed25519", sig))
    )
    shown = ostree("show", f"--repo={repo}", f"--print-detached-metadata-key={signing.ED25519_KEY}", checksum)
    assert printed_bytestrings(shown.stdout) == [sig]
    verified = ostree("sign", f"--repo={repo}", "--verify", checksum, public, check=False)
    if "not implemented" not in verified.stderr:
        assert verified.returncode == 0, verified.stderr
