"""moto's server as the local stack runs it: like `python -m moto.server`, except that STS
AssumeRoleWithWebIdentity is accepted unsigned while IAM enforcement is on, as real STS accepts it (the
web identity token is the credential). Without this, moto asks for a signature that no IRSA client sends."""

import sys

from moto.core.authorization import ActionAuthenticatorMixin
from moto.server import main

UNSIGNED_ACTIONS = {"AssumeRoleWithWebIdentity"}
_authenticate = ActionAuthenticatorMixin._authenticate_and_authorize_action


def _authenticate_signed_actions(self, iam_request_cls, resource="*"):
    if self._get_action() in UNSIGNED_ACTIONS:
        return None
    return _authenticate(self, iam_request_cls, resource)


ActionAuthenticatorMixin._authenticate_and_authorize_action = _authenticate_signed_actions

if __name__ == "__main__":
    sys.exit(main())
