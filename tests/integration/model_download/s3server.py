"""A real S3-compatible server for the tests: moto's server mode as a process, with authentication on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import httpx

from tests.integration.runtime_server.harness import free_port
from tests.waiting import wait_for

REGION = "us-east-1"
MIN_PART_BYTES = 64 * 1024
# IAM users and what each may do: `runtime` everything, `lister` list buckets but read no object (AWS names
# the listing's permission s3:ListBucket; moto checks the operation's own name)
USERS = {
    "runtime": "s3:*",
    "lister": ["s3:ListBucket", "s3:ListObjectsV2"],
}  # S3 wants 5 MiB parts; moto takes smaller ones, so tiny files can be multipart


class MotoServer:
    """`python -m moto.server` on a free loopback port. Requests must be signed with keys of an IAM user
    made at start (moto checks signatures and policies once its first unauthenticated actions are spent)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen | None = None
        self.key_id = self.secret = ""
        self.keys: dict[str, tuple[str, str]] = {}  # user -> (key id, secret)

    def __enter__(self) -> MotoServer:
        # the three actions that make the IAM user, its key and its policy are the only unauthenticated ones
        env = {
            **os.environ,
            "INITIAL_NO_AUTH_ACTION_COUNT": str(3 * len(USERS)),
            "S3_UPLOAD_PART_MIN_SIZE": str(MIN_PART_BYTES),
        }
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                env=env,
                stdout=log,
                stderr=log,
            )
        wait_for(self._answers, timeout=60, interval=0.1, what=f"moto server on {self.url}")
        iam = boto3.client(
            "iam", endpoint_url=self.url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
        )
        for user, actions in USERS.items():
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            allowed = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
            }
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(allowed))
            self.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        self.key_id, self.secret = self.keys["runtime"]
        return self

    def _answers(self) -> bool:
        assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
        try:
            httpx.get(f"{self.url}/moto-api/", timeout=2)
            return True
        except httpx.TransportError:
            return False

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def env(self, endpoint_url: str | None = None, user: str = "runtime", **overrides: str) -> dict[str, str]:
        """The standard AWS variables a runtime process reads to reach this server (or a proxy of it)."""
        key_id, secret = self.keys[user]
        return {
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL_S3": endpoint_url or self.url,  # as the operator sets it: S3 only, not STS
            "AWS_REGION": REGION,
            **overrides,
        }

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )


def upload_folder(client, bucket: str, prefix: str, folder: Path, multipart: set[str] = frozenset()) -> None:
    """Every file of `folder` under `prefix`; the names in `multipart` as multipart uploads of small parts,
    whose ETag is an MD5 of the parts' MD5s."""
    for path in sorted(folder.iterdir()):
        key = f"{prefix}/{path.name}"
        if path.name in multipart:
            upload_multipart(client, bucket, key, path.read_bytes())
        else:
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


def upload_multipart(
    client, bucket: str, key: str, data: bytes, part_bytes: int = MIN_PART_BYTES * 4
) -> None:
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), part_bytes), start=1):
        part = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data[start : start + part_bytes]
        )
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
