#!/bin/sh
# Wraps one *-restore binary for tests/faults/test_iptables_faults.py (see its docstring).
# WRAP_MODE=inject: the first --noflush document declaring ISTIO_ chains gets a rule the kernel
#   rejects at commit, in its last table. WRAP_MODE=hang: an ip6tables --noflush apply blocks.
n=${0##*/}
real=$(PATH="$WRAP_REAL_PATH" command -v "$n")
printf '%s %s\n' "$n" "$*" >> "$WRAP_LOG"
case " $* " in *" --noflush "*) ;; *) exec "$real" "$@";; esac
doc=$(cat)
if printf '%s\n' "$doc" | grep -Eq '^(:|-N )ISTIO_'; then
    if [ "$WRAP_MODE" = inject ] && [ ! -e "$WRAP_MARK" ]; then
        touch "$WRAP_MARK"
        echo "injected" >> "$WRAP_LOG"
        doc=$(printf '%s\n' "$doc" | awk '
            { line[NR] = $0 } /^\*/ { table = $0; gsub(/[* ]/, "", table) } /^COMMIT$/ { last = NR; last_table = table }
            END { for (i = 1; i <= NR; i++) {
                    if (i == last) print (last_table == "filter" ? "-A INPUT" : "-A PREROUTING") " -m owner --uid-owner 1 -j RETURN"
                    print line[i] } }')
    fi
    if [ "$WRAP_MODE" = hang ]; then
        case "$n" in ip6tables*) echo "hanging" >> "$WRAP_LOG"; sleep 120;; esac
    fi
fi
printf '%s\n' "$doc" | exec "$real" "$@"
