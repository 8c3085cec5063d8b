// Package sim is Usher's simulated hypervisor: an implementation of
// nodemgr.Driver that keeps guests as plain records instead of
// running machines. It exists for tests, demos (`usher sim …`) and scale
// experiments (thousands of simulated nodes with ~100 VMs each in one
// process), and as a reference for how a driver is expected to behave:
// capacity refusal, Table 3 state transitions, migration hand-off,
// lifecycle events and synthetic usage samples.
//
// What it may touch: nothing outside its own memory, except — only when
// Options.StateFile is set — that file, a sibling "<file>.lock" used with
// flock(2), and temporary files "<file>.tmp*" in the same directory (written
// and renamed over the state file so every update is atomic). It starts no
// goroutines and no timers per guest; BootDelay is slept in the caller's
// goroutine. It never touches a real hypervisor, the network or other
// processes; other processes may touch it only through the state file
// (see Inject), which is how faults are injected into a running LNM.
//
// State file details: a change is noticed, before each List, Start, Op,
// migration call and Stats, when the file's inode, size or modification
// time differ from the version last seen, or when the generation counter
// that this package's writers bump in the lock file has moved. Writes are not
// fsynced: they survive the process dying, not the machine losing power
// (which would have killed real VMs too).
package sim
