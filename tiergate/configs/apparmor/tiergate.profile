# tiergate AppArmor profile template, one profile per security tier.
#
# Written for tiergate in the spirit of Docker's docker-default, but rendered
# per tier by hook/apparmor.py (render()). Double-brace markers are
# replaced by validated, generated rule lines only; values from the policy
# file (tier name, writable mount paths, capabilities) are checked against
# strict character sets before they reach this text. A rendered profile is
# compiled with `apparmor_parser -Q -K` in the tests.
#
# Notes on semantics:
#  - In AppArmor a deny rule always wins over an allow rule, so a read-only
#    rootfs is not written as `deny /** w` plus exceptions (the exceptions
#    would be denied too): such tiers get no general `file,` rule, read/exec
#    everywhere and write only below the writable paths; every other write is
#    denied because nothing allows it.
#  - Signals and ptrace are allowed only within the same profile; signals
#    from the runtime (unconfined, or runc/crun profiles) may be received so
#    that stop/kill work.

abi <abi/3.0>,

#include <tunables/global>

profile {{name}} flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  # Network: socket families the tier may use.
{{network}}

  # Capabilities: only the tier's allowed set (none listed: none allowed).
{{capabilities}}

  # Files.
{{files}}

  # No mount table changes from inside the container.
  deny mount,
  deny remount,
  deny umount,
  deny pivot_root,

  # /proc: no writes to files directly in /proc, nor below entries that are
  # not process ids, nor anywhere under /proc/sys; no sysrq, no kcore.
  deny @{PROC}/* w,
  deny @{PROC}/{[^1-9],[^1-9][^0-9],[^1-9][^0-9][^0-9],[^1-9][^0-9][^0-9][^0-9/]*}/** w,
  deny @{PROC}/sys/** w,
  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,

  # /sys: read-only; firmware, LSM state and powercap energy counters hidden.
  deny /sys/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,

  # Signals: the runtime (unconfined, or confined as runc/crun) may stop and
  # kill the container; otherwise only processes of this profile.
  signal (receive) peer=unconfined,
  signal (receive) peer=runc,
  signal (receive) peer=crun,
  signal (send,receive) peer={{name}},

  # ptrace: only within this profile; never trace or read outside processes.
  deny ptrace (trace,read) peer=unconfined,
  ptrace (trace,read,tracedby,readby) peer={{name}},
}
