#!/bin/sh
# provisioning-client.sh - the original bench's device loop, curl and dd
# only (POSIX sh, busybox compatible). It registers, polls, and runs what the
# technician chose:
#   deploy: curl -s URL | dd of=DISK bs=4M
#   backup: dd if=DISK bs=4M | curl -T - URL   (or curl --data-binary @- URL)
# then reports POST /api/action-done with no status (the original sends none).
#
# Environment: SERVER (http://host:port), MAC, IP, DISK (/dev/mmcblk0).
# Test knobs (not in the original): MAX_ACTIONS stops after that many
# actions (0 = run forever), UPLOAD=put|post picks the upload style,
# DONE=json|form picks the action-done encoding, POLL is the poll interval.
: "${SERVER:?SERVER=http://host:port}" "${MAC:?MAC=xx:xx:xx:xx:xx:xx}"
IP=${IP:-127.0.0.1}
DISK=${DISK:-/dev/mmcblk0}
MAX_ACTIONS=${MAX_ACTIONS:-0}
UPLOAD=${UPLOAD:-put}
DONE=${DONE:-json}
POLL=${POLL:-1}

json_field() { # json_field NAME < json
	sed -n "s/.*\"$1\": *\"\\([^\"]*\\)\".*/\\1/p"
}

curl -s -f -X POST -H "Content-Type: application/json" \
	-d "{\"mac\": \"$MAC\", \"ip\": \"$IP\"}" "$SERVER/api/register-device" >/dev/null || {
	echo "register failed" >&2
	exit 1
}
echo "registered $MAC"

done_actions=0
while :; do
	resp=$(curl -s "$SERVER/api/device-action-poll?mac=$MAC")
	action=$(printf '%s\n' "$resp" | json_field action)
	case "$action" in
	deploy)
		url=$(printf '%s\n' "$resp" | json_field url)
		echo "deploy from $url"
		curl -s "$url" | dd of="$DISK" bs=4M
		;;
	backup)
		url=$(printf '%s\n' "$resp" | json_field upload_url)
		echo "backup to $url"
		if [ "$UPLOAD" = post ]; then
			dd if="$DISK" bs=4M | curl -s --data-binary @- "$url"
		else
			dd if="$DISK" bs=4M | curl -s -T - "$url"
		fi
		;;
	*)
		sleep "$POLL"
		continue
		;;
	esac
	if [ "$DONE" = form ]; then
		curl -s -d "mac=$MAC" -d "action=$action" "$SERVER/api/action-done"
	else
		curl -s -X POST -H "Content-Type: application/json" \
			-d "{\"mac\": \"$MAC\", \"action\": \"$action\"}" "$SERVER/api/action-done"
	fi
	echo
	done_actions=$((done_actions + 1))
	if [ "$MAX_ACTIONS" -gt 0 ] && [ "$done_actions" -ge "$MAX_ACTIONS" ]; then
		exit 0
	fi
done
