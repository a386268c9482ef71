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
- A secret named by its name is found directly, and so is the absence of one: moto scans every secret on
  each lookup (several per value read, and one per secret created), 0.5 ms a lookup at the 100,000 bench's
  25,000 secrets. ARNs and partial ARNs are still found by moto's scan.
- ListSecrets builds the answer for the page asked only, and filters the secrets once per listing: moto
  built the answer for every matching secret on each page (a quarter of a second per page of 100 at 25,000
  secrets), and then still filtered all of them on each page, so that one check of 25,000 secrets took 25 to
  35 s of a core, which at 100,000 ExternalSecrets kept moto busy through the bench. The first page takes
  the matching names; the next pages' tokens name that listing, as AWS's tokens stand for a listing under
  way. A secret deleted since is left out of its page; one created since shows in the next listing.
- The request recorder writes each entry under a lock: moto writes an entry and its newline in two calls, so
  concurrent requests could interleave and corrupt both lines, and tests count calls from that file."""

import json
import sys
import threading
import uuid
from collections import OrderedDict

from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam import access_control
from moto.moto_api._internal.recorder.models import Recorder
from moto.secretsmanager.models import MAX_RESULTS_DEFAULT, SecretsManagerBackend, SecretsStore, _matches
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


# Secrets are kept under their names, and only ARNs (full or partial) start with "arn:".
def _getitem_by_name(self, key):
    if not key.startswith("arn:"):
        return dict.__getitem__(self, key)
    return _scan_getitem(self, key)


def _contains_by_name(self, key):
    if not key.startswith("arn:"):
        return dict.__contains__(self, key)
    return _scan_contains(self, key)


def _get_by_name(self, key):
    if not key.startswith("arn:"):
        return dict.get(self, key)
    return _scan_get(self, key)


# Listings under way, by id: the matching names, in moto's order. Bounded: a client may stop half way.
_listings = OrderedDict()
_listings_lock = threading.Lock()
LISTINGS_KEPT = 64


def _list_secrets_page(self, filters, max_results=None, next_token=None, include_planned_deletion=False):
    listing_id, _, start = (next_token or "").rpartition(":")
    with _listings_lock:
        names = _listings.get(listing_id)
    if names is None:
        # A first page, or a listing no longer kept: that one goes on from its offset over a new listing.
        listing_id = uuid.uuid4().hex
        names = [
            name
            for name, secret in dict.items(self.secrets)
            if (include_planned_deletion or not getattr(secret, "deleted_date", None))
            and _matches(secret, filters)
        ]
    start = int(start or 0)
    end = start + int(max_results or MAX_RESULTS_DEFAULT)
    page = [secret.to_dict() for name in names[start:end] if (secret := dict.get(self.secrets, name))]
    with _listings_lock:
        if end < len(names):
            _listings[listing_id] = names
            while len(_listings) > LISTINGS_KEPT:
                _listings.popitem(last=False)
            return page, f"{listing_id}:{end}"
        _listings.pop(listing_id, None)
    return page, None


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
SecretsManagerBackend.list_secrets = _list_secrets_page

if __name__ == "__main__":
    sys.exit(main())
