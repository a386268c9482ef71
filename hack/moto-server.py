"""moto's server as the local stack runs it: `python -m moto.server` with three changes that make its IAM
enforcement behave like AWS where our tests depend on it:

- STS AssumeRoleWithWebIdentity is accepted unsigned, as real STS accepts it (the web identity token is
  the credential). Without this, moto asks for a signature that no IRSA client sends.
- Session tags of an AssumeRole request are condition values (`aws:RequestTag/<key>`), so that a trust
  policy can require the tags the operator sets.
- Secrets Manager requests name their secret as the resource, so that ARN-scoped policies are checked;
  moto checks them against "*" otherwise."""

import json
import sys

from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam import access_control
from moto.secretsmanager.responses import SecretsManagerResponse
from moto.server import main

UNSIGNED_ACTIONS = {"AssumeRoleWithWebIdentity"}
_authenticate = ActionAuthenticatorMixin._authenticate_and_authorize_action
_condition_values = access_control.format_incoming_conditional_values


def _authenticate_signed_actions(self, iam_request_cls, resource="*"):
    if self._get_action() in UNSIGNED_ACTIONS:
        return None
    return _authenticate(self, iam_request_cls, resource)


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
    if secret_id.startswith("arn:"):
        return secret_id
    return f"arn:aws:secretsmanager:{self.region}:{self.current_account}:secret:{secret_id}"


ActionAuthenticatorMixin._authenticate_and_authorize_action = _authenticate_signed_actions
access_control.format_incoming_conditional_values = _condition_values_with_request_tags
SecretsManagerResponse._determine_resource = _secret_as_resource

if __name__ == "__main__":
    sys.exit(main())
