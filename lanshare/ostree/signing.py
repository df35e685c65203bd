"""OSTree commit and summary signatures (GPG and ed25519), byte-compatible with libostree.

Signatures live in an ``a{sv}``: the ``.commitmeta`` object of a commit, or ``summary.sig`` next to
``summary``.  Both engines sign the raw bytes of the ``.commit`` object (or of ``summary``):

* ``ostree.gpgsigs`` (``aay``): each element a binary detached OpenPGP signature.  Made with ``gpg``,
  verified with ``gpgv`` against a keyring file, as libostree does with gpgme.
* ``ostree.sign.ed25519`` (``aay``): each element a raw 64-byte ed25519 signature (libsodium's
  ``crypto_sign_detached``).  Public keys are base64 of the 32 raw bytes; secret keys base64 of
  libsodium's 64-byte form (32-byte seed, then the public key); a bare 32-byte seed is accepted too.

A signature is accepted when *any* signature verifies with a trusted key (as libostree's
``require_valid_signature``), so a commit signed by an old and a new key passes during a rotation.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lanshare import gvariant
from lanshare.errors import SignatureError, UsageError
from lanshare.gvariant import GVariantError, Variant

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# cryptography is imported where ed25519 is used: most pulls verify GPG signatures or none, and
# importing it costs ~10 ms of every command's start.

GPG_KEY = "ostree.gpgsigs"
ED25519_KEY = "ostree.sign.ed25519"
SIGNATURE_TYPE = "aay"

Kind = Literal["gpg", "ed25519"]
_METADATA_KEYS: dict[str, str] = {"gpg": GPG_KEY, "ed25519": ED25519_KEY}

ED25519_SIGNATURE_BYTES = 64
_GPG_TIMEOUT = 60


@dataclass(frozen=True)
class VerifiedSignature:
    """The signature that made a commit (or summary) trusted, and the key that made it."""

    kind: Kind
    # GPG: long key id of the signing (sub)key, as ``ostree show`` prints it; ed25519: the base64 public key
    key_id: str
    fingerprint: str | None = None  # GPG only: the signing key's fingerprint
    primary_fingerprint: str | None = None  # GPG only: its primary key's (the one in ``gpg --list-keys``)


# --- the signature dictionary -----------------------------------------------------------------------


def signatures_of(metadata: Mapping[str, Variant], kind: Kind) -> list[bytes]:
    """The signatures of one kind in a commitmeta/summary.sig dict; a mistyped entry is a SignatureError."""
    key = _METADATA_KEYS[kind]
    value = metadata.get(key)
    if value is None:
        return []
    if not isinstance(value, Variant) or value.signature != SIGNATURE_TYPE:
        got = value.signature if isinstance(value, Variant) else type(value).__name__
        raise SignatureError(
            f"{key} has type {got}, expected {SIGNATURE_TYPE}: the signature data is corrupt"
        )
    return list(value.value)


def add_signature(metadata: Mapping[str, Variant], kind: Kind, signature: bytes) -> dict[str, Variant]:
    """Return a copy of ``metadata`` with ``signature`` appended to the ``kind`` list (others kept)."""
    result = dict(metadata)
    result[_METADATA_KEYS[kind]] = Variant(SIGNATURE_TYPE, [*signatures_of(metadata, kind), bytes(signature)])
    return result


def encode_signatures(metadata: Mapping[str, Variant]) -> bytes:
    """Serialize a commitmeta / summary.sig dictionary."""
    return gvariant.encode("a{sv}", dict(metadata))


def decode_signatures(data: bytes, name: str = "signatures") -> dict[str, Variant]:
    """Parse a commitmeta / summary.sig file; malformed data is a SignatureError naming ``name``."""
    try:
        result: dict[str, Variant] = gvariant.decode("a{sv}", data)
    except GVariantError as e:
        raise SignatureError(f"{name} is corrupt: {e}") from None
    return result


# --- GPG --------------------------------------------------------------------------------------------


def _run(argv: Sequence[str], data: bytes, what: str) -> subprocess.CompletedProcess[bytes]:
    program = shutil.which(argv[0])
    if program is None:
        raise SignatureError(f"{what}: {argv[0]} is not installed (apt-get install {argv[0]})")
    try:
        return subprocess.run(
            [program, *argv[1:]],
            input=data,
            capture_output=True,
            timeout=_GPG_TIMEOUT,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired:
        raise SignatureError(f"{what}: {argv[0]} did not finish within {_GPG_TIMEOUT} s") from None


def _stderr(proc: subprocess.CompletedProcess[bytes]) -> str:
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return "; ".join(lines[-3:]) or f"exit status {proc.returncode}"


def sign_gpg(data: bytes, key_id: str, homedir: Path) -> bytes:
    """A binary detached OpenPGP signature of ``data`` by ``key_id`` from the GnuPG home ``homedir``."""
    argv = ["gpg", "--homedir", str(homedir), "--batch", "--no-tty", "--detach-sign", "--local-user", key_id]
    proc = _run([*argv, "--output", "-"], data, f"signing with GPG key {key_id}")
    if proc.returncode != 0 or not proc.stdout:
        raise SignatureError(f"gpg could not sign with key {key_id} from {homedir}: {_stderr(proc)}")
    return proc.stdout


def sign_commit_gpg(commit_bytes: bytes, key_id: str, homedir: Path) -> bytes:
    """A detached GPG signature over a ``.commit`` object's raw bytes, for ``ostree.gpgsigs``."""
    return sign_gpg(commit_bytes, key_id, homedir)


def export_public_keyring(homedir: Path, key_ids: Iterable[str], dest: Path) -> Path:
    """Write the public keys ``key_ids`` from ``homedir`` as a binary keyring file (for gpgv or ostree)."""
    ids = list(key_ids)
    proc = _run(["gpg", "--homedir", str(homedir), "--batch", "--export", *ids], b"", "exporting GPG keys")
    if proc.returncode != 0 or not proc.stdout:
        raise SignatureError(
            f"gpg exported nothing for {', '.join(ids) or 'no keys'} from {homedir}: {_stderr(proc)}"
        )
    dest.write_bytes(proc.stdout)
    return dest


_ARMOR_BLOCK = re.compile(
    rb"-----BEGIN PGP PUBLIC KEY BLOCK-----(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.S
)


def _dearmor(data: bytes, source: Path) -> bytes:
    """Binary keyring bytes from an ASCII-armored export (gpgv only reads binary keyrings)."""
    out = bytearray()
    for block in _ARMOR_BLOCK.findall(data):
        lines = [line.strip() for line in block.replace(b"\r", b"").split(b"\n")[1:]]
        # Armor headers (often none) end at the first blank line; the CRC line starts with "=".
        if b"" in lines:
            lines = lines[lines.index(b"") + 1 :]
        payload = b"".join(line for line in lines if line and not line.startswith(b"="))
        try:
            out += base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise SignatureError(f"GPG keyring {source} has a corrupt ASCII-armored block") from None
    if not out:
        raise SignatureError(f"GPG keyring {source} holds no public key block")
    return bytes(out)


def _keyring_files(keyring: Path, tmpdir: Path) -> list[Path]:
    """Binary keyring files for gpgv: a file (binary or armored), or every *.gpg / *.asc in a directory."""
    if keyring.is_dir():
        candidates = sorted(p for p in keyring.iterdir() if p.suffix in (".gpg", ".asc") and p.is_file())
        if not candidates:
            raise SignatureError(f"GPG keyring directory {keyring} holds no *.gpg or *.asc file")
    elif keyring.is_file():
        candidates = [keyring]
    else:
        raise SignatureError(f"GPG keyring {keyring} does not exist (check trust.gpg_keyring)")
    files = []
    for i, path in enumerate(candidates):
        data = path.read_bytes()
        if b"-----BEGIN PGP" in data[:4096]:
            binary = tmpdir / f"keyring-{i}.gpg"
            binary.write_bytes(_dearmor(data, path))
            files.append(binary)
        else:
            files.append(path.absolute())  # gpgv looks a bare name up in its homedir
    return files


@dataclass
class _GpgvResult:
    """What gpgv's status lines say about one signature."""

    good_key: str | None = None
    fingerprint: str | None = None
    primary_fingerprint: str | None = None
    problems: list[str] = field(default_factory=list)


def _parse_status(status: str) -> list[_GpgvResult]:
    """Group gpgv ``[GNUPG:]`` status lines by NEWSIG into one result per signature."""
    results: list[_GpgvResult] = []
    current: _GpgvResult | None = None
    for line in status.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        word, *args = line[9:].split()
        if word == "NEWSIG":
            current = _GpgvResult()
            results.append(current)
            continue
        if current is None:
            continue
        keyid = args[0] if args else "?"
        if word == "GOODSIG":
            current.good_key = keyid
        elif word == "VALIDSIG" and args:
            current.fingerprint = args[0]
            current.primary_fingerprint = args[9] if len(args) >= 10 else args[0]
        elif word == "BADSIG":
            current.problems.append(
                f"BAD signature by key {keyid}: the signed data or the signature was altered"
            )
        elif word == "EXPKEYSIG":
            current.problems.append(f"signature by key {keyid}, which has expired")
        elif word == "REVKEYSIG":
            current.problems.append(f"signature by key {keyid}, which has been revoked")
        elif word == "EXPSIG":
            current.problems.append(f"signature by key {keyid} has expired")
        elif word == "NO_PUBKEY":
            current.problems.append(f"signed by key {keyid}, which is not in the trusted keyring")
        elif word == "ERRSIG" and len(args) >= 6 and args[5] != "9":
            # rc 9 (missing key) is reported by NO_PUBKEY; other codes mean an unusable signature
            current.problems.append(f"signature by key {keyid} cannot be checked (gpgv error code {args[5]})")
    return results


def _verify_gpg_one(data: bytes, signature: bytes, keyrings: list[Path], tmpdir: Path) -> VerifiedSignature:
    sig_path = tmpdir / "signature"
    sig_path.write_bytes(signature)
    home = tmpdir / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    argv = ["gpgv", "--homedir", str(home), "--status-fd", "1"]
    for keyring in keyrings:
        argv += ["--keyring", str(keyring)]
    proc = _run([*argv, str(sig_path), "-"], data, "verifying a GPG signature")
    results = _parse_status(proc.stdout.decode("utf-8", "replace"))
    if not results:
        first_line = proc.stderr.decode("utf-8", "replace").strip().partition("\n")[0]
        raise SignatureError(f"corrupt: not an OpenPGP signature ({first_line or 'gpgv found none'})")
    problems: list[str] = []
    for r in results:
        if r.good_key and r.fingerprint and not r.problems:
            primary = r.primary_fingerprint or r.fingerprint
            # The key id comes from the verified fingerprint: GOODSIG's may come from the unhashed
            # (unsigned, hence malleable) issuer subpacket.
            return VerifiedSignature("gpg", r.fingerprint[-16:], r.fingerprint, primary)
        problems += r.problems or ["corrupt: gpgv could not check it"]
    raise SignatureError("; ".join(problems))


def verify_gpg(data: bytes, signatures: Sequence[bytes], keyring: Path) -> VerifiedSignature:
    """The first of ``signatures`` that gpgv verifies over ``data`` with ``keyring``; else SignatureError."""
    if not signatures:
        raise SignatureError("no GPG signature")
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lanshare-gpgv-") as tmp:
        tmpdir = Path(tmp)
        keyrings = _keyring_files(keyring, tmpdir)
        for i, signature in enumerate(signatures):
            try:
                return _verify_gpg_one(data, signature, keyrings, tmpdir)
            except SignatureError as e:
                problems.append(f"GPG signature {i + 1}: {e}")
    raise SignatureError("; ".join(problems) + f" (keyring {keyring})")


# --- ed25519 ----------------------------------------------------------------------------------------


def _b64(text: str | bytes, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{what} is not valid base64") from None


def parse_ed25519_public_key(key: str | bytes, what: str = "ed25519 public key") -> bytes:
    """The 32 raw bytes of a base64 ed25519 public key (libostree's format)."""
    raw = _b64(key, what)
    if len(raw) != 32:
        raise UsageError(f"{what} decodes to {len(raw)} bytes; an ed25519 public key is 32 bytes of base64")
    return raw


def parse_ed25519_secret_key(key: str | bytes, what: str = "ed25519 secret key") -> Ed25519PrivateKey:
    """A secret key from base64: libsodium's 64 bytes (seed + public key) or a 32-byte seed."""
    raw = _b64(key, what)
    if len(raw) not in (32, 64):
        raise UsageError(
            f"{what} decodes to {len(raw)} bytes; expected 64 (libsodium: seed + public key) or 32 (seed)"
        )
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(raw[:32])
    if len(raw) == 64 and _public_raw(private) != raw[32:]:
        raise UsageError(f"{what}: its second half is not the public key of its seed (the key is corrupt)")
    return private


def _public_raw(private: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ed25519_public_key(secret_key: str | bytes) -> str:
    """The base64 public key (libostree's format) of a base64 secret key."""
    return base64.b64encode(_public_raw(parse_ed25519_secret_key(secret_key))).decode("ascii")


def generate_ed25519_keypair() -> tuple[str, str]:
    """A fresh (public, secret) pair in libostree's base64 formats (secret: libsodium's 64 bytes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = _public_raw(private)
    return base64.b64encode(public).decode("ascii"), base64.b64encode(seed + public).decode("ascii")


def load_ed25519_keys(path: Path) -> list[str]:
    """The base64 keys of a key file (one per line, as ``ostree sign --keys-file``; blank lines ignored)."""
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read ed25519 key file {path}: {e}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        raw = _b64(line, f"{path}:{number}")
        if len(raw) not in (32, 64):
            raise UsageError(
                f"{path}:{number}: decodes to {len(raw)} bytes; expected an ed25519 key "
                "(32-byte public key, 64-byte libsodium secret key or 32-byte seed, base64)"
            )
        keys.append(line)
    if not keys:
        raise UsageError(f"ed25519 key file {path} holds no key")
    return keys


def load_ed25519_secret_key(path: Path) -> str:
    """The first secret key of a key file, checked (64-byte libsodium form or 32-byte seed)."""
    key = load_ed25519_keys(path)[0]
    parse_ed25519_secret_key(key, f"{path}:1")
    return key


def sign_ed25519(data: bytes, secret_key: str | bytes) -> bytes:
    """A raw 64-byte ed25519 signature of ``data`` (crypto_sign_detached)."""
    return parse_ed25519_secret_key(secret_key).sign(data)


def sign_commit_ed25519(commit_bytes: bytes, secret_key: str | bytes) -> bytes:
    """An ed25519 signature over a ``.commit`` object's raw bytes, for ``ostree.sign.ed25519``."""
    return sign_ed25519(commit_bytes, secret_key)


def verify_ed25519(data: bytes, signatures: Sequence[bytes], public_keys: Sequence[str]) -> VerifiedSignature:
    """The first (signature, key) pair that verifies ``data``; else SignatureError saying why."""
    if not signatures:
        raise SignatureError("no ed25519 signature")
    keys = [(k.strip(), parse_ed25519_public_key(k, f"ed25519 key {k.strip()!r}")) for k in public_keys]
    if not keys:
        raise SignatureError("no trusted ed25519 key configured (trust.ed25519_keys)")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    problems: list[str] = []
    for i, signature in enumerate(signatures):
        if len(signature) != ED25519_SIGNATURE_BYTES:
            problems.append(f"ed25519 signature {i + 1} is corrupt ({len(signature)} bytes, expected 64)")
            continue
        for text, raw in keys:
            try:
                Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
            except InvalidSignature:
                continue
            return VerifiedSignature("ed25519", text)
        problems.append(
            f"ed25519 signature {i + 1} does not verify with any of the {len(keys)} trusted key(s): "
            "signed by another key, or the signed data or signature was altered"
        )
    raise SignatureError("; ".join(problems))


# --- commits and summaries ----------------------------------------------------------------------------


def verify_signatures(
    data: bytes,
    metadata: Mapping[str, Variant],
    *,
    gpg_keyring: Path | None = None,
    ed25519_keys: Sequence[str] = (),
    what: str = "data",
) -> VerifiedSignature:
    """Accept ``data`` if any signature in ``metadata`` verifies with a trusted key; else SignatureError."""
    gpg_sigs = signatures_of(metadata, "gpg")
    ed_sigs = signatures_of(metadata, "ed25519")
    if gpg_keyring is None and not ed25519_keys:
        raise SignatureError(
            f"{what}: no trusted key configured (set trust.gpg_keyring or trust.ed25519_keys)"
        )
    if not gpg_sigs and not ed_sigs:
        raise SignatureError(f"{what} is not signed (no {GPG_KEY} or {ED25519_KEY} signature)")
    problems: list[str] = []
    if gpg_sigs:
        if gpg_keyring is None:
            problems.append(
                f"{len(gpg_sigs)} GPG signature(s) but no GPG keyring configured (trust.gpg_keyring)"
            )
        else:
            try:
                return verify_gpg(data, gpg_sigs, gpg_keyring)
            except SignatureError as e:
                problems.append(str(e))
    if ed_sigs:
        if not ed25519_keys:
            problems.append(
                f"{len(ed_sigs)} ed25519 signature(s) but no ed25519 key configured (trust.ed25519_keys)"
            )
        else:
            try:
                return verify_ed25519(data, ed_sigs, ed25519_keys)
            except SignatureError as e:
                problems.append(str(e))
    raise SignatureError(f"{what} has no valid signature: " + "; ".join(problems))


def verify_commit_signatures(
    commit_bytes: bytes,
    commitmeta: Mapping[str, Variant] | None,
    *,
    gpg_keyring: Path | None = None,
    ed25519_keys: Sequence[str] = (),
    checksum: str | None = None,
) -> VerifiedSignature:
    """Verify a commit's detached signatures (its ``.commitmeta``) over the raw ``.commit`` bytes."""
    what = f"commit {checksum}" if checksum else "commit"
    return verify_signatures(
        commit_bytes, commitmeta or {}, gpg_keyring=gpg_keyring, ed25519_keys=ed25519_keys, what=what
    )


def verify_summary_signature(
    summary_bytes: bytes,
    summary_sig_bytes: bytes | None,
    *,
    gpg_keyring: Path | None = None,
    ed25519_keys: Sequence[str] = (),
) -> VerifiedSignature:
    """Verify ``summary.sig`` (an ``a{sv}`` of signatures) over the raw ``summary`` bytes."""
    if summary_sig_bytes is None:
        raise SignatureError("summary is not signed (no summary.sig)")
    metadata = decode_signatures(summary_sig_bytes, "summary.sig")
    return verify_signatures(
        summary_bytes, metadata, gpg_keyring=gpg_keyring, ed25519_keys=ed25519_keys, what="summary"
    )


def sign_metadata(
    data: bytes,
    metadata: Mapping[str, Variant] | None = None,
    *,
    gpg_key_ids: Sequence[str] = (),
    gpg_homedir: Path | None = None,
    ed25519_secret_keys: Sequence[str | bytes] = (),
) -> dict[str, Variant]:
    """``metadata`` (a commitmeta or summary.sig dict) with new signatures of ``data`` appended."""
    result = dict(metadata or {})
    if gpg_key_ids:
        if gpg_homedir is None:
            raise UsageError("GPG signing needs a GnuPG home directory (--gpg-homedir)")
        for key_id in gpg_key_ids:
            result = add_signature(result, "gpg", sign_gpg(data, key_id, gpg_homedir))
    for secret in ed25519_secret_keys:
        result = add_signature(result, "ed25519", sign_ed25519(data, secret))
    return result


def sign_summary(
    summary_bytes: bytes,
    *,
    gpg_key_ids: Sequence[str] = (),
    gpg_homedir: Path | None = None,
    ed25519_secret_keys: Sequence[str | bytes] = (),
) -> bytes:
    """A fresh ``summary.sig`` for ``summary_bytes`` (old signatures never carry over: they sign old data)."""
    if not gpg_key_ids and not ed25519_secret_keys:
        raise UsageError("signing the summary needs a GPG key id or an ed25519 secret key")
    return encode_signatures(
        sign_metadata(
            summary_bytes,
            gpg_key_ids=gpg_key_ids,
            gpg_homedir=gpg_homedir,
            ed25519_secret_keys=ed25519_secret_keys,
        )
    )
