#!/usr/bin/env python3
"""Runs boto3 calls against a KMS endpoint and compares each outcome with what the AWS KMS API
reference documents for it (success, or the error code and HTTP status).

    kms_conformance.py URL REGION ACCESS_KEY SECRET_KEY [--lenient] [--local-only-checks]

Every row of the table below is one call; `expect(...)` records the documented outcome next to
the call. Exit status 1 when any row differs, unless --lenient (used to compare moto with the
same table: its differences are printed, not failed on). --local-only-checks adds the rows that
exercise the local KMS's hardening (SigV4 body hash and signed X-Amz-Target, issue 20 item 5)
with raw HTTP requests.

Sources of the documented outcomes: the "Errors" section of each operation in the AWS KMS API
Reference (every KMS error is HTTP 400 except KMSInternalException 500, DependencyTimeout 503
and DryRunOperationException 412), the "Key states of AWS KMS keys" table of the KMS Developer
Guide (a disabled key refuses cryptographic use with DisabledException, a key pending deletion
with KMSInvalidStateException; CancelKeyDeletion leaves the key Disabled), and the parameter
constraints of each request (ValidationException).
"""

import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
import uuid

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

URL, REGION, AKID, SECRET = sys.argv[1:5]
LENIENT = "--lenient" in sys.argv
LOCAL_ONLY = "--local-only-checks" in sys.argv

kms = boto3.client(
    "kms",
    endpoint_url=URL,
    region_name=REGION,
    aws_access_key_id=AKID,
    aws_secret_access_key=SECRET,
    config=Config(retries={"max_attempts": 1}),
)

ROWS = []  # (label, expected, got)


def outcome(fn):
    try:
        return "ok", fn()
    except ClientError as e:
        err = e.response["Error"]["Code"]
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        return f"{err} {status}", None


def expect(label, fn, code=None, status=400):
    """Calls fn; the documented outcome is success (code None) or `code` with HTTP `status`."""
    want = "ok" if code is None else f"{code} {status}"
    try:
        got, value = outcome(fn)
    except AssertionError as e:
        got, value = f"assertion failed: {e}", None
    except Exception as e:  # noqa: BLE001 - a crash is a difference, reported with the row
        got, value = f"{type(e).__name__}: {e}", None
    ROWS.append((label, want, got))
    return value


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def arn(key_id):
    return kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]


MISSING = str(uuid.uuid4())

# ---------------------------------------------------------------- keys and aliases
sym = kms.create_key(Description="conformance", Tags=[{"TagKey": "team", "TagValue": "a"}])[
    "KeyMetadata"
]
sym_id = sym["KeyId"]
sym2_id = kms.create_key()["KeyMetadata"]["KeyId"]
expect("CreateAlias", lambda: kms.create_alias(AliasName="alias/app", TargetKeyId=sym_id))
expect(
    "CreateAlias: name taken",
    lambda: kms.create_alias(AliasName="alias/app", TargetKeyId=sym2_id),
    "AlreadyExistsException",
)
expect(
    "CreateAlias: no alias/ prefix",
    lambda: kms.create_alias(AliasName="app2", TargetKeyId=sym_id),
    "InvalidAliasNameException",
)
expect(
    "CreateAlias: reserved alias/aws/",
    lambda: kms.create_alias(AliasName="alias/aws/mine", TargetKeyId=sym_id),
    "InvalidAliasNameException",
)
expect(
    "CreateAlias: unknown key",
    lambda: kms.create_alias(AliasName="alias/nowhere", TargetKeyId=MISSING),
    "NotFoundException",
)


def use_alias(key_id):
    ct = kms.encrypt(KeyId=key_id, Plaintext=b"via alias")
    check(ct["KeyId"] == sym["Arn"], f"Encrypt KeyId {ct['KeyId']}")
    check(kms.decrypt(CiphertextBlob=ct["CiphertextBlob"])["Plaintext"] == b"via alias", "plain")
    return ct


expect("Encrypt/Decrypt with alias name", lambda: use_alias("alias/app"))
expect(
    "Encrypt with alias ARN",
    lambda: use_alias(sym["Arn"].replace(f"key/{sym_id}", "alias/app")),
)
expect("Encrypt with key ARN", lambda: use_alias(sym["Arn"]))
expect(
    "GenerateDataKey with alias",
    lambda: check(
        len(kms.generate_data_key(KeyId="alias/app", KeySpec="AES_256")["Plaintext"]) == 32, "len"
    ),
)
expect(
    "Decrypt with KeyId=alias",
    lambda: kms.decrypt(
        KeyId="alias/app",
        CiphertextBlob=kms.encrypt(KeyId=sym_id, Plaintext=b"x")["CiphertextBlob"],
    ),
)
expect(
    "Decrypt: KeyId names another key",
    lambda: kms.decrypt(
        KeyId=sym2_id, CiphertextBlob=kms.encrypt(KeyId=sym_id, Plaintext=b"x")["CiphertextBlob"]
    ),
    "IncorrectKeyException",
)
expect(
    "DescribeKey with alias",
    lambda: check(kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == sym_id, "id"),
)
expect(
    "Encrypt with unknown alias",
    lambda: kms.encrypt(KeyId="alias/missing", Plaintext=b"x"),
    "NotFoundException",
)
expect(
    "ListAliases(KeyId)",
    lambda: check(
        [(a["AliasName"], a["TargetKeyId"]) for a in kms.list_aliases(KeyId=sym_id)["Aliases"]]
        == [("alias/app", sym_id)],
        "aliases",
    ),
)
expect(
    "ListAliases paginates",
    lambda: check(
        len(kms.list_aliases(Limit=1)["Aliases"]) == 1, "one alias per page"
    ),
)
expect("UpdateAlias", lambda: kms.update_alias(AliasName="alias/app", TargetKeyId=sym2_id))
expect(
    "alias follows UpdateAlias",
    lambda: check(kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == sym2_id, "id"),
)
expect(
    "UpdateAlias: unknown alias",
    lambda: kms.update_alias(AliasName="alias/none", TargetKeyId=sym_id),
    "NotFoundException",
)
expect("DeleteAlias", lambda: kms.delete_alias(AliasName="alias/app"))
expect(
    "DeleteAlias: already deleted",
    lambda: kms.delete_alias(AliasName="alias/app"),
    "NotFoundException",
)
kms.create_alias(AliasName="alias/dest", TargetKeyId=sym2_id)

# ---------------------------------------------------------------- ReEncrypt
ct = kms.encrypt(KeyId=sym_id, Plaintext=b"moving", EncryptionContext={"a": "b"})["CiphertextBlob"]


def re_encrypt_roundtrip():
    r = kms.re_encrypt(
        CiphertextBlob=ct,
        SourceEncryptionContext={"a": "b"},
        DestinationKeyId="alias/dest",
        DestinationEncryptionContext={"c": "d"},
    )
    check(r["SourceKeyId"] == sym["Arn"], "SourceKeyId")
    check(r["KeyId"].endswith(sym2_id), "KeyId")
    d = kms.decrypt(CiphertextBlob=r["CiphertextBlob"], EncryptionContext={"c": "d"})
    check(d["Plaintext"] == b"moving" and d["KeyId"].endswith(sym2_id), "re-encrypted plaintext")


expect("ReEncrypt", re_encrypt_roundtrip)
expect(
    "ReEncrypt: wrong source context",
    lambda: kms.re_encrypt(
        CiphertextBlob=ct, SourceEncryptionContext={"a": "x"}, DestinationKeyId=sym2_id
    ),
    "InvalidCiphertextException",
)
expect(
    "ReEncrypt: unknown destination",
    lambda: kms.re_encrypt(
        CiphertextBlob=ct, SourceEncryptionContext={"a": "b"}, DestinationKeyId=MISSING
    ),
    "NotFoundException",
)

# ---------------------------------------------------------------- rotation
expect(
    "GetKeyRotationStatus (off)",
    lambda: check(not kms.get_key_rotation_status(KeyId=sym_id)["KeyRotationEnabled"], "off"),
)
old_ct = kms.encrypt(KeyId=sym_id, Plaintext=b"before rotation")["CiphertextBlob"]
expect("EnableKeyRotation", lambda: kms.enable_key_rotation(KeyId=sym_id))
expect(
    "GetKeyRotationStatus (on, 365 days)",
    lambda: check(
        kms.get_key_rotation_status(KeyId=sym_id)["KeyRotationEnabled"]
        and kms.get_key_rotation_status(KeyId=sym_id)["RotationPeriodInDays"] == 365,
        "on",
    ),
)
expect(
    "EnableKeyRotation: period above 2560",
    lambda: kms.enable_key_rotation(KeyId=sym_id, RotationPeriodInDays=2561),
    "ValidationException",
)
expect("RotateKeyOnDemand", lambda: kms.rotate_key_on_demand(KeyId=sym_id))
for _ in range(9):
    kms.rotate_key_on_demand(KeyId=sym_id)
expect(
    "RotateKeyOnDemand: eleventh time",
    lambda: kms.rotate_key_on_demand(KeyId=sym_id),
    "LimitExceededException",
)
expect(
    "old ciphertext decrypts after rotation",
    lambda: check(
        kms.decrypt(CiphertextBlob=old_ct)["Plaintext"] == b"before rotation", "plaintext"
    ),
)
expect(
    "new ciphertext after rotation",
    lambda: check(
        kms.decrypt(CiphertextBlob=kms.encrypt(KeyId=sym_id, Plaintext=b"n")["CiphertextBlob"])[
            "Plaintext"
        ]
        == b"n",
        "plaintext",
    ),
)
expect("DisableKeyRotation", lambda: kms.disable_key_rotation(KeyId=sym_id))
expect(
    "GetKeyRotationStatus (off again)",
    lambda: check(not kms.get_key_rotation_status(KeyId=sym_id)["KeyRotationEnabled"], "off"),
)

# ---------------------------------------------------------------- tags
expect(
    "TagResource", lambda: kms.tag_resource(KeyId=sym_id, Tags=[{"TagKey": "env", "TagValue": "p"}])
)
expect(
    "ListResourceTags",
    lambda: check(
        sorted((t["TagKey"], t["TagValue"]) for t in kms.list_resource_tags(KeyId=sym_id)["Tags"])
        == [("env", "p"), ("team", "a")],
        "tags",
    ),
)
expect("UntagResource", lambda: kms.untag_resource(KeyId=sym_id, TagKeys=["team"]))
expect(
    "ListResourceTags after UntagResource",
    lambda: check(
        [t["TagKey"] for t in kms.list_resource_tags(KeyId=sym_id)["Tags"]] == ["env"], "tags"
    ),
)
expect(
    "TagResource: reserved aws: prefix",
    lambda: kms.tag_resource(KeyId=sym_id, Tags=[{"TagKey": "aws:x", "TagValue": "v"}]),
    "TagException",
)
expect(
    "ListResourceTags: unknown key",
    lambda: kms.list_resource_tags(KeyId=MISSING),
    "NotFoundException",
)

expect(
    "UpdateKeyDescription",
    lambda: check(
        kms.update_key_description(KeyId=sym_id, Description="renamed") is not None
        and kms.describe_key(KeyId=sym_id)["KeyMetadata"]["Description"] == "renamed",
        "description",
    ),
)

# ---------------------------------------------------------------- disabled keys
expect("DisableKey", lambda: kms.disable_key(KeyId=sym2_id))
expect(
    "Encrypt: disabled key",
    lambda: kms.encrypt(KeyId=sym2_id, Plaintext=b"x"),
    "DisabledException",
)
expect(
    "EnableKeyRotation: disabled key",
    lambda: kms.enable_key_rotation(KeyId=sym2_id),
    "DisabledException",
)
expect("EnableKey", lambda: kms.enable_key(KeyId=sym2_id))

# ---------------------------------------------------------------- deletion
doomed = kms.create_key()["KeyMetadata"]["KeyId"]


def schedule():
    r = kms.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)
    check(r["KeyState"] == "PendingDeletion" and r["PendingWindowInDays"] == 7, str(r))
    m = kms.describe_key(KeyId=doomed)["KeyMetadata"]
    check(m["KeyState"] == "PendingDeletion" and not m["Enabled"] and "DeletionDate" in m, str(m))


expect(
    "ScheduleKeyDeletion: window of 6 days",
    lambda: kms.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=6),
    "ValidationException",
)
expect(
    "ScheduleKeyDeletion: window of 31 days",
    lambda: kms.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=31),
    "ValidationException",
)
expect("ScheduleKeyDeletion", schedule)
for label, call in [
    ("Encrypt", lambda: kms.encrypt(KeyId=doomed, Plaintext=b"x")),
    ("GenerateDataKey", lambda: kms.generate_data_key(KeyId=doomed, NumberOfBytes=16)),
    ("ScheduleKeyDeletion", lambda: kms.schedule_key_deletion(KeyId=doomed)),
    ("EnableKey", lambda: kms.enable_key(KeyId=doomed)),
    ("DisableKey", lambda: kms.disable_key(KeyId=doomed)),
    ("TagResource", lambda: kms.tag_resource(KeyId=doomed, Tags=[{"TagKey": "k", "TagValue": ""}])),
    ("CreateAlias", lambda: kms.create_alias(AliasName="alias/doomed", TargetKeyId=doomed)),
    ("EnableKeyRotation", lambda: kms.enable_key_rotation(KeyId=doomed)),
    ("UpdateKeyDescription", lambda: kms.update_key_description(KeyId=doomed, Description="x")),
]:
    expect(f"{label}: key pending deletion", call, "KMSInvalidStateException")
expect(
    "CancelKeyDeletion",
    lambda: check(kms.cancel_key_deletion(KeyId=doomed)["KeyId"].endswith(doomed), "KeyId"),
)
expect(
    "CancelKeyDeletion leaves the key Disabled",
    lambda: check(kms.describe_key(KeyId=doomed)["KeyMetadata"]["KeyState"] == "Disabled", "state"),
)
expect(
    "CancelKeyDeletion: not pending",
    lambda: kms.cancel_key_deletion(KeyId=doomed),
    "KMSInvalidStateException",
)
expect(
    "Encrypt: cancelled key is disabled",
    lambda: kms.encrypt(KeyId=doomed, Plaintext=b"x"),
    "DisabledException",
)

# ---------------------------------------------------------------- asymmetric: SIGN_VERIFY
HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
SIGN_SPECS = {
    "ECC_NIST_P256": ["ECDSA_SHA_256"],
    "ECC_NIST_P384": ["ECDSA_SHA_384"],
    "ECC_NIST_P521": ["ECDSA_SHA_512"],
    "ECC_SECG_P256K1": ["ECDSA_SHA_256"],
}
RSA_SIGNING = [
    f"RSASSA_{p}_SHA_{n}" for p in ("PSS", "PKCS1_V1_5") for n in ("256", "384", "512")
]
for size in ("2048", "3072", "4096"):
    SIGN_SPECS[f"RSA_{size}"] = RSA_SIGNING
MESSAGE = b"an EIF signing payload"


def local_verify(public, algorithm, message, signature, digest_mode):
    h = HASHES[algorithm.rsplit("_", 1)[1]]()
    prehashed = utils.Prehashed(h) if digest_mode else h
    if algorithm.startswith("ECDSA"):
        public.verify(signature, message, ec.ECDSA(prehashed))
    elif "PSS" in algorithm:
        pss = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
        public.verify(signature, message, pss, prehashed)
    else:
        public.verify(signature, message, padding.PKCS1v15(), prehashed)


sign_keys = {}
for spec, algorithms in SIGN_SPECS.items():
    def create_sign_key(spec=spec, algorithms=algorithms):
        m = kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]
        check(m["KeyUsage"] == "SIGN_VERIFY" and m["KeySpec"] == spec, str(m))
        check(sorted(m["SigningAlgorithms"]) == sorted(algorithms), str(m["SigningAlgorithms"]))
        sign_keys[spec] = m["KeyId"]

    expect(f"CreateKey {spec} SIGN_VERIFY", create_sign_key)
    key_id = sign_keys.get(spec)
    if key_id is None:
        continue

    def public_key(key_id=key_id, spec=spec, algorithms=algorithms):
        r = kms.get_public_key(KeyId=key_id)
        check(r["KeySpec"] == spec and r["KeyUsage"] == "SIGN_VERIFY", str(r))
        check(sorted(r["SigningAlgorithms"]) == sorted(algorithms), "SigningAlgorithms")
        return serialization.load_der_public_key(r["PublicKey"])

    public = expect(f"GetPublicKey {spec} (DER SubjectPublicKeyInfo)", public_key)
    for algorithm in algorithms:
        for mode in ("RAW", "DIGEST"):
            def sign_verify(key_id=key_id, algorithm=algorithm, mode=mode, public=public):
                h = HASHES[algorithm.rsplit("_", 1)[1]]()
                message = MESSAGE
                if mode == "DIGEST":
                    message = hashlib.new(h.name, MESSAGE).digest()
                r = kms.sign(
                    KeyId=key_id, Message=message, MessageType=mode, SigningAlgorithm=algorithm
                )
                check(r["SigningAlgorithm"] == algorithm, "SigningAlgorithm")
                local_verify(public, algorithm, message, r["Signature"], mode == "DIGEST")
                v = kms.verify(
                    KeyId=key_id,
                    Message=message,
                    MessageType=mode,
                    Signature=r["Signature"],
                    SigningAlgorithm=algorithm,
                )
                check(v["SignatureValid"], "SignatureValid")
                return r["Signature"]

            signature = expect(f"Sign/Verify {spec} {algorithm} {mode}", sign_verify)
        if signature is not None:
            expect(
                f"Verify {spec} {algorithm}: other message",
                lambda key_id=key_id, algorithm=algorithm, signature=signature: kms.verify(
                    KeyId=key_id,
                    Message=MESSAGE + b"!",
                    MessageType="RAW",
                    Signature=signature,
                    SigningAlgorithm=algorithm,
                ),
                "KMSInvalidSignatureException",
            )

p384 = sign_keys.get("ECC_NIST_P384")
if p384:
    kms.create_alias(AliasName="alias/eif-signer", TargetKeyId=p384)
    expect(
        "Sign with alias",
        lambda: kms.sign(
            KeyId="alias/eif-signer", Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_384"
        ),
    )
    expect(
        "Sign: algorithm of another curve",
        lambda: kms.sign(KeyId=p384, Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256"),
        "InvalidKeyUsageException",
    )
    expect(
        "Sign: DIGEST of the wrong length",
        lambda: kms.sign(
            KeyId=p384, Message=b"\0" * 32, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_384"
        ),
        "ValidationException",
    )
    expect(
        "Encrypt with a SIGN_VERIFY key",
        lambda: kms.encrypt(KeyId=p384, Plaintext=b"x"),
        "InvalidKeyUsageException",
    )
    expect(
        "GenerateDataKey with a SIGN_VERIFY key",
        lambda: kms.generate_data_key(KeyId=p384, NumberOfBytes=16),
        "InvalidKeyUsageException",
    )
    expect(
        "ReEncrypt to a SIGN_VERIFY key",
        lambda: kms.re_encrypt(
            CiphertextBlob=ct, SourceEncryptionContext={"a": "b"}, DestinationKeyId=p384
        ),
        "InvalidKeyUsageException",
    )
    expect(
        "EnableKeyRotation: asymmetric key",
        lambda: kms.enable_key_rotation(KeyId=p384),
        "UnsupportedOperationException",
    )
    expect(
        "GetKeyRotationStatus: asymmetric key",
        lambda: kms.get_key_rotation_status(KeyId=p384),
        "UnsupportedOperationException",
    )
    expect(
        "UpdateAlias to a key of another type",
        lambda: kms.update_alias(AliasName="alias/eif-signer", TargetKeyId=sym_id),
        "ValidationException",
    )
    kms.disable_key(KeyId=p384)
    expect(
        "Sign: disabled key",
        lambda: kms.sign(KeyId=p384, Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_384"),
        "DisabledException",
    )
    kms.enable_key(KeyId=p384)
expect(
    "Sign with a symmetric key",
    lambda: kms.sign(KeyId=sym_id, Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_384"),
    "InvalidKeyUsageException",
)
expect(
    "GetPublicKey of a symmetric key",
    lambda: kms.get_public_key(KeyId=sym_id),
    "UnsupportedOperationException",
)

# ---------------------------------------------------------------- asymmetric: ENCRYPT_DECRYPT
rsa_id = expect(
    "CreateKey RSA_2048 ENCRYPT_DECRYPT",
    lambda: kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"],
)
if rsa_id:
    def rsa_roundtrips():
        r = kms.get_public_key(KeyId=rsa_id)
        check(
            sorted(r["EncryptionAlgorithms"]) == ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"],
            str(r),
        )
        public = serialization.load_der_public_key(r["PublicKey"])
        for alg, h in (("RSAES_OAEP_SHA_1", hashes.SHA1), ("RSAES_OAEP_SHA_256", hashes.SHA256)):
            local = public.encrypt(
                b"to the key", padding.OAEP(mgf=padding.MGF1(h()), algorithm=h(), label=None)
            )
            d = kms.decrypt(KeyId=rsa_id, CiphertextBlob=local, EncryptionAlgorithm=alg)
            check(d["Plaintext"] == b"to the key" and d["EncryptionAlgorithm"] == alg, alg)
            e = kms.encrypt(KeyId=rsa_id, Plaintext=b"from kms", EncryptionAlgorithm=alg)
            d = kms.decrypt(
                KeyId=rsa_id, CiphertextBlob=e["CiphertextBlob"], EncryptionAlgorithm=alg
            )
            check(d["Plaintext"] == b"from kms", alg)

    expect("RSA Encrypt/Decrypt, both OAEP algorithms", rsa_roundtrips)
    expect(
        "Encrypt RSA key with SYMMETRIC_DEFAULT",
        lambda: kms.encrypt(KeyId=rsa_id, Plaintext=b"x"),
        "InvalidKeyUsageException",
    )
    expect(
        "Encrypt RSA_2048 OAEP_SHA_256: plaintext above 190 bytes",
        lambda: kms.encrypt(KeyId=rsa_id, Plaintext=b"x" * 191, EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
        "ValidationException",
    )
    expect(
        "ReEncrypt to an RSA key",
        lambda: kms.decrypt(
            KeyId=rsa_id,
            EncryptionAlgorithm="RSAES_OAEP_SHA_256",
            CiphertextBlob=kms.re_encrypt(
                CiphertextBlob=ct,
                SourceEncryptionContext={"a": "b"},
                DestinationKeyId=rsa_id,
                DestinationEncryptionAlgorithm="RSAES_OAEP_SHA_256",
            )["CiphertextBlob"],
        ),
    )

# ---------------------------------------------------------------- asymmetric: KEY_AGREEMENT
ka = expect(
    "CreateKey ECC_NIST_P384 KEY_AGREEMENT",
    lambda: kms.create_key(KeySpec="ECC_NIST_P384", KeyUsage="KEY_AGREEMENT")["KeyMetadata"][
        "KeyId"
    ],
)
if ka:
    def ecdh():
        theirs = serialization.load_der_public_key(kms.get_public_key(KeyId=ka)["PublicKey"])
        mine = ec.generate_private_key(ec.SECP384R1())
        mine_der = mine.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        r = kms.derive_shared_secret(KeyId=ka, KeyAgreementAlgorithm="ECDH", PublicKey=mine_der)
        check(r["SharedSecret"] == mine.exchange(ec.ECDH(), theirs), "shared secret")

    expect("DeriveSharedSecret", ecdh)
    if p384:
        expect(
            "DeriveSharedSecret with a SIGN_VERIFY key",
            lambda: kms.derive_shared_secret(
                KeyId=p384, KeyAgreementAlgorithm="ECDH", PublicKey=b"\x30" * 100
            ),
            "InvalidKeyUsageException",
        )

# ---------------------------------------------------------------- key policies
policy_key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
ACCOUNT = kms.describe_key(KeyId=policy_key)["KeyMetadata"]["AWSAccountId"]
deny_sign = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Sign", "Resource": "*"},
    ],
}
expect(
    "PutKeyPolicy (Deny kms:Sign)",
    lambda: kms.put_key_policy(KeyId=policy_key, PolicyName="default", Policy=json.dumps(deny_sign)),
)
expect(
    "Sign denied by the key policy",
    lambda: kms.sign(KeyId=policy_key, Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256"),
    "AccessDeniedException",
)
expect("GetPublicKey still allowed", lambda: kms.get_public_key(KeyId=policy_key))
partial = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::*:role/app-*"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ],
}
expect(
    "PutKeyPolicy: partial wildcard in a principal",
    lambda: kms.put_key_policy(KeyId=policy_key, PolicyName="default", Policy=json.dumps(partial)),
    "MalformedPolicyDocumentException",
)

# ---------------------------------------------------------------- not found, invalid
expect("DescribeKey: unknown key", lambda: kms.describe_key(KeyId=MISSING), "NotFoundException")
expect(
    "Decrypt: not a ciphertext",
    lambda: kms.decrypt(CiphertextBlob=b"\x07" * 64),
    "InvalidCiphertextException",
)
expect(
    "ScheduleKeyDeletion: unknown key",
    lambda: kms.schedule_key_deletion(KeyId=MISSING),
    "NotFoundException",
)


# ---------------------------------------------------------------- SigV4 hardening (local only)
def raw(target, body, sign_target=True, content_sha256=True, send_body=None):
    """A KMS request signed by botocore, then sent (possibly altered) with urllib."""
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if sign_target:
        headers["X-Amz-Target"] = f"TrentService.{target}"
    if content_sha256:
        headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    req = AWSRequest(method="POST", url=URL + "/", data=body, headers=headers)
    SigV4Auth(Credentials(AKID, SECRET), "kms", REGION).add_auth(req)
    prepared = req.prepare()
    send_headers = dict(prepared.headers)
    if not sign_target:
        send_headers["X-Amz-Target"] = f"TrentService.{target}"
    data = body if send_body is None else send_body
    http = urllib.request.Request(URL + "/", data=data, headers=send_headers, method="POST")
    try:
        with urllib.request.urlopen(http) as r:
            return "ok", r.status
    except urllib.error.HTTPError as e:
        return json.loads(e.read()).get("__type"), e.code


def raw_expect(label, want, **kw):
    got = raw(**kw)
    ROWS.append((label, f"{want[0]} {want[1]}", f"{got[0]} {got[1]}"))


if LOCAL_ONLY:
    body = json.dumps({"KeyId": sym_id}).encode()
    raw_expect("raw request signed by botocore", ("ok", 200), target="DescribeKey", body=body)
    raw_expect(
        "signed x-amz-content-sha256, other body",
        ("InvalidSignatureException", 400),
        target="DescribeKey",
        body=body,
        send_body=json.dumps({"KeyId": sym2_id}).encode(),
    )
    raw_expect(
        "X-Amz-Target not signed",
        ("IncompleteSignatureException", 400),
        target="ScheduleKeyDeletion",
        body=body,
        sign_target=False,
    )

# ---------------------------------------------------------------- report
width = max(len(r[0]) for r in ROWS)
bad = [r for r in ROWS if r[1] != r[2]]
for label, want, got in ROWS:
    mark = "  " if want == got else "!!"
    print(f"{mark} {label:<{width}}  documented: {want:<32} got: {got}")
print(f"{len(ROWS)} rows, {len(bad)} differ from the documented outcome")
sys.exit(1 if bad and not LENIENT else 0)
