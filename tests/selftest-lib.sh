# shellcheck shell=bash
# Shared by the shell self-tests (tests/cluster/selftest.sh, tests/slurm/selftest.sh); sourced,
# not run. Counts results in $pass and $failed.
#   selftest_need NAME TOOL...   root (exit 77 = skipped otherwise) and every tool, else exit 1
#   ok / bad / check / refuse / eq   record one result

pass=0
failed=0

selftest_need() { # name, tool...
    local name=$1 tool
    shift
    if [ "$(id -u)" -ne 0 ]; then
        echo "$name: needs root; skipped" >&2
        exit 77
    fi
    for tool in "$@"; do
        command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin
        command -v "$tool" >/dev/null || { echo "$name: $tool missing; run scripts/install-deps" >&2; exit 1; }
    done
}

ok() { pass=$((pass + 1)); printf 'ok   %s\n' "$1"; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$1"; [ -z "${2:-}" ] || printf '     %s\n' "$2"; }
check() { # description, command...
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$what"; else bad "$what" "$(printf '%s' "$out" | tail -n 5 | tr '\n' ' ')"; fi
}
refuse() { # description, command... : must fail
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then bad "$what" "succeeded: $(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')"; else ok "$what"; fi
}
eq() { # description, expected, actual
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "expected [$2], got [$3]"; fi
}
