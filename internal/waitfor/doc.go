// Package waitfor is the tests' one way to wait for something another
// goroutine, process or machine brings about: poll with growing intervals
// (5 ms up to 200 ms) until a condition holds or a deadline passes, then
// fail the test naming what was awaited and why it last did not hold.
//
// Waiting is not synchronization by sleep: the condition is an observable
// fact (a state, a file, an event), and the deadline is a limit for a slow
// machine, not an expected duration. Only test code imports this package.
package waitfor
