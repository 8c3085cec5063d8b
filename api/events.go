package api

// Event names: the Type of an Event, the names policies register for with
// usher.on, and what docs/architecture.md lists. Request events run as a
// chain that may approve, modify or reject a request; the others are
// notifications.
const (
	EvAuthenticate    = "authenticate"
	EvAuthorize       = "authorize"
	EvStartRequest    = "start_request"
	EvMigrateRequest  = "migrate_request"
	EvOpRequest       = "op_request"
	EvRegisterVM      = "register_vm"
	EvStartComplete   = "start_complete"
	EvOpComplete      = "op_complete"
	EvMigrateComplete = "migrate_complete"
	EvStateChanged    = "state_changed"
	EvVMLost          = "vm_lost"
	EvVMMissing       = "vm_missing"
	EvVMUnmanaged     = "vm_unmanaged"
	EvVMConflict      = "vm_conflict"  // a node reported a VM another connected node holds
	EvVMForgotten     = "vm_forgotten" // an owner or admin forgot a missing or lost VM
	EvLNMConnected    = "lnm_connected"
	EvLNMDisconnected = "lnm_disconnected"
	EvLNMMode         = "lnm_mode"    // a node's mode, notice or fence changed
	EvReservation     = "reservation" // a reservation was created, started, extended or ended (detail state)
	EvRecovered       = "recovered"   // a restarted controller's state is whole again: to every feed
	EvError           = "error"
	EvTimer           = "timer"
)

// RequestEvents are the events whose handlers form a request chain.
func RequestEvents() []string {
	return []string{EvAuthenticate, EvAuthorize, EvStartRequest, EvMigrateRequest, EvOpRequest, EvRegisterVM}
}

// NotifyEvents are the notification events policies may handle.
func NotifyEvents() []string {
	return []string{EvStartComplete, EvOpComplete, EvMigrateComplete, EvStateChanged, EvVMLost,
		EvVMMissing, EvVMUnmanaged, EvVMConflict, EvVMForgotten, EvLNMConnected, EvLNMDisconnected, EvLNMMode, EvReservation, EvRecovered, EvError}
}
