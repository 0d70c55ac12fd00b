#!/usr/bin/env bash
echo "bench: not built yet"
