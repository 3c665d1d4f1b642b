#!/bin/sh
# Enable more components (e.g. "contrib non-free") of the Debian archive this image already uses,
# for the container it runs in only. Reads the image's own source (one-line sources.list as
# debootstrap writes it, or deb822 debian.sources), so no mirror is named here. No argument: nothing.
set -eu
components=${1:-}
[ -n "$components" ] || exit 0
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  sed -i "s/^Components: main\$/Components: main $components/" /etc/apt/sources.list.d/debian.sources
  exit 0
fi
uri=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)
suite=$(awk '$1 == "deb" { print $3; exit }' /etc/apt/sources.list)
if [ -z "$uri" ] || [ -z "$suite" ]; then
  echo "apt-components: no Debian archive found in /etc/apt/sources.list" >&2
  exit 1
fi
printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: %s\n' "$uri" "$suite" "$components" \
  > /etc/apt/sources.list.d/llamafleet-components.sources
