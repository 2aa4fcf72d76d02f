#!/usr/bin/env bash
# Runs a command and kills it when the test process that started it dies.
#
#   guard.sh PARENT_PID PROGRAM [ARGS...]
#
# The Rust test runner exits without dropping statics, so brokers and proxies that
# a test binary shares would outlive it. This guard polls the parent and SIGKILLs
# the child once the parent is gone; SIGTERM to the guard does the same at once.
parent=$1
shift
"$@" &
child=$!
trap 'kill -9 "$child" 2>/dev/null; wait "$child" 2>/dev/null; exit 0' TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do
    sleep 1 &
    wait $!
done
kill -9 "$child" 2>/dev/null
wait "$child" 2>/dev/null
