#!/usr/bin/env bash
# GNU gettext (xgettext, msgmerge, msgfmt): tests/test_locale.py checks that the
# catalogues in django_token_rotation/locale/ are current with the source
# (`make messages` produces no diff) and that the compiled .mo files match them.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
command -v xgettext >/dev/null 2>&1 && command -v msgfmt >/dev/null 2>&1 || apt_install gettext
xgettext --version | head -1
