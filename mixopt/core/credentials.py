"""Credentials written into a URL (`https://user:password@host/...`, `s3://KEY:SECRET@bucket/...`) never
reach a message, a manifest or a report: every place a source becomes text passes it through here."""

from __future__ import annotations

import re

# scheme://user[:secret]@: the user holds no '/', ':' or '@'; the secret runs to the first '@' (AWS
# secrets hold raw '/'). The '@' of a Hub revision (hf://datasets/org/name@main) follows a '/' before
# any ':', so it is not userinfo; a port followed by a path with '@' is over-redacted, never leaked.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*)(?P<secret>:[^@\s]*)?@")


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***; a user name alone (often a token,
    as in https://TOKEN@host) is replaced too."""
    def hide(m: re.Match) -> str:
        if m.group("secret") is not None:
            return f"{m.group('scheme')}{m.group('user')}:***@"
        return f"{m.group('scheme')}***@"
    return _USERINFO.sub(hide, text)
