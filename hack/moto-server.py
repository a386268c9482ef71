"""moto's server as the local stack runs it: `python -m moto.server` with changes that make it behave like
AWS where our tests and benches depend on it:

- STS AssumeRoleWithWebIdentity is accepted unsigned, as real STS accepts it (the web identity token is
  the credential). Without this, moto asks for a signature that no IRSA client sends.
- Session tags of an AssumeRole request are condition values (`aws:RequestTag/<key>`), so that a trust
  policy can require the tags the operator sets.
- Secrets Manager requests name their secret as the resource, so that ARN-scoped policies are checked;
  moto checks them against "*" otherwise.
- BatchGetSecretValue also needs GetSecretValue on every secret it names, as on AWS. AWS answers a denied
  secret with a per-secret error; here the whole call is denied, which the operator handles the same way
  (it reads those secrets one by one).
- A secret named by its name is found directly: moto scans every secret on each lookup (several per value
  read), 0.5 ms a lookup at the 100,000 bench's 25,000 secrets. ARNs and partial ARNs are still found by
  moto's scan.
- The request recorder writes each entry under a lock: moto writes an entry and its newline in two calls, so
  concurrent requests could interleave and corrupt both lines, and tests count calls from that file."""

import json
import sys
import threading

from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam import access_control
from moto.moto_api._internal.recorder.models import Recorder
from moto.secretsmanager.models import SecretsStore
from moto.secretsmanager.responses import SecretsManagerResponse
from moto.server import main

UNSIGNED_ACTIONS = {"AssumeRoleWithWebIdentity"}
_authenticate = ActionAuthenticatorMixin._authenticate_and_authorize_action
_condition_values = access_control.format_incoming_conditional_values


def _authenticate_signed_actions(self, iam_request_cls, resource="*"):
    action = self._get_action()
    if action in UNSIGNED_ACTIONS:
        return None
    _authenticate(self, iam_request_cls, resource)
    if action == "BatchGetSecretValue":
        ids = json.loads(self.body or "{}").get("SecretIdList") or []
        self._get_action = lambda: "GetSecretValue"
        try:
            for secret_id in ids:
                _authenticate(self, iam_request_cls, _secret_arn(self, secret_id))
        finally:
            del self._get_action
    return None


def _condition_values_with_request_tags(data):
    values = _condition_values(data)
    for name, keys in data.items():
        if name.startswith("Tags.member.") and name.endswith(".Key"):
            tag_value = data.get(name[: -len(".Key")] + ".Value", [""])
            values[f"aws:RequestTag/{keys[0]}"] = tag_value[0]
    return values


def _secret_as_resource(self):
    try:
        secret_id = json.loads(self.body or "{}").get("SecretId")
    except ValueError:
        secret_id = None
    if not secret_id:
        return "*"
    return _secret_arn(self, secret_id)


def _secret_arn(self, secret_id):
    if secret_id.startswith("arn:"):
        return secret_id
    return f"arn:aws:secretsmanager:{self.region}:{self.current_account}:secret:{secret_id}"


_scan_getitem = SecretsStore.__getitem__
_scan_contains = SecretsStore.__contains__
_scan_get = SecretsStore.get


def _getitem_by_name(self, key):
    if dict.__contains__(self, key):
        return dict.__getitem__(self, key)
    return _scan_getitem(self, key)


def _contains_by_name(self, key):
    return dict.__contains__(self, key) or _scan_contains(self, key)


def _get_by_name(self, key):
    if dict.__contains__(self, key):
        return dict.__getitem__(self, key)
    return _scan_get(self, key)


_record_request = Recorder._record_request
_record_lock = threading.Lock()


def _record_request_whole(self, request, body=None):
    with _record_lock:
        return _record_request(self, request, body)


ActionAuthenticatorMixin._authenticate_and_authorize_action = _authenticate_signed_actions
Recorder._record_request = _record_request_whole
access_control.format_incoming_conditional_values = _condition_values_with_request_tags
SecretsManagerResponse._determine_resource = _secret_as_resource
SecretsStore.__getitem__ = _getitem_by_name
SecretsStore.__contains__ = _contains_by_name
SecretsStore.get = _get_by_name

if __name__ == "__main__":
    sys.exit(main())
