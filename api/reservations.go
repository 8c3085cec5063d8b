package api

import (
	"fmt"
	"strings"
	"time"
)

// Reservations: resources held on nodes for one user (or one of the
// user's virtual clusters) between a start and an end, as the paper's
// RRC-KI deployment needed for jobs. While a reservation is active, what
// its VMs do not use of it is not offered to anyone else; VMs started
// under it (start … reservation=ID) carry its id and end in their data,
// and when it ends a policy shuts them down or destroys them.

// DataReservation and DataReservationEnd are the data a VM started under
// a reservation carries: its id, and its end (RFC 3339) when the VM
// started (the reservation's record has the current end).
const (
	DataReservation    = "reservation"
	DataReservationEnd = "reservation_end"
)

// Reservation states.
const (
	ResPending = "pending" // its start is to come
	ResActive  = "active"  // held
	ResEnded   = "ended"   // ended or cancelled; its VMs are being dealt with
)

// What happens to a reservation's VMs when it ends.
const (
	OnEndShutdown = "shutdown"
	OnEndDestroy  = "destroy"
)

// Reservation is resources held on each of some nodes for a user.
type Reservation struct {
	ID      string    `json:"id"`
	Owner   string    `json:"owner"`             // the user it is held for
	Cluster string    `json:"cluster,omitempty"` // only VMs of this cluster of the owner
	MemMB   int       `json:"mem_mb"`            // held on each of LNMs
	VCPUs   int       `json:"vcpus"`             // held on each of LNMs
	LNMs    []string  `json:"lnms"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	OnEnd   string    `json:"on_end"` // shutdown or destroy
	By      string    `json:"by"`     // who created it
	Created time.Time `json:"created"`
	State   string    `json:"state"` // pending, active, ended
	// Used is what its VMs take now on each node; VMs are their names
	// (answers only).
	Used map[string]ReservationUse `json:"used,omitempty"`
	VMs  []string                  `json:"vms,omitempty"`
}

// ReservationUse is what a reservation's VMs take of one node.
type ReservationUse struct {
	MemMB int `json:"mem_mb"`
	VCPUs int `json:"vcpus"`
}

// Actions of the reservations method.
const (
	ResList   = "list"
	ResCreate = "create"
	ResExtend = "extend"
	ResCancel = "cancel"
)

// ReservationsArgs lists reservations (the caller's; All: everyone's, for
// admins), creates one (admins: for User, optionally only Cluster, MemMB
// and VCPUs on each of LNMs — none: the controller picks one node —, from
// Start, RFC 3339 or "" for now, until End, RFC 3339, or for For, a
// duration; OnEnd shutdown (default) or destroy), extends one (ID; the new
// End or For more; owners as policy allows) or cancels one (ID; owner or
// admin).
type ReservationsArgs struct {
	Action  string   `json:"action"`
	ID      string   `json:"id,omitempty"`
	User    string   `json:"user,omitempty"`
	Cluster string   `json:"cluster,omitempty"`
	MemMB   int      `json:"mem_mb,omitempty"`
	VCPUs   int      `json:"vcpus,omitempty"`
	LNMs    []string `json:"lnms,omitempty"`
	Start   string   `json:"start,omitempty"`
	End     string   `json:"end,omitempty"`
	For     string   `json:"for,omitempty"`
	OnEnd   string   `json:"on_end,omitempty"`
	All     bool     `json:"all,omitempty"`
}

// ReservationsReply answers reservations.
type ReservationsReply struct {
	Reservations []Reservation `json:"reservations"`
}

// MaxReservationLNMs bounds a reservation's nodes; MaxReservationLength
// its length.
const (
	MaxReservationLNMs   = 256
	MaxReservationLength = 366 * 24 * time.Hour
)

// ValidReservationID checks a reservation id ("r-" and 12 hex digits).
func ValidReservationID(id string) error {
	if len(id) != 14 || !strings.HasPrefix(id, "r-") || strings.Trim(id[2:], "0123456789abcdef") != "" {
		return fmt.Errorf("reservation id %.20q: r- and 12 hex digits", id)
	}
	return nil
}

// Times parses Start, End and For relative to now: the start (now when
// empty) and, when End or For is given, the end.
func (a ReservationsArgs) Times(now time.Time) (start, end time.Time, err error) {
	start = now
	if a.Start != "" {
		if start, err = time.Parse(time.RFC3339, a.Start); err != nil {
			return start, end, bad("start %.40q: RFC 3339, such as 2026-12-24T08:00:00Z", a.Start)
		}
	}
	switch {
	case a.End != "" && a.For != "":
		return start, end, bad("give end or for, not both")
	case a.End != "":
		if end, err = time.Parse(time.RFC3339, a.End); err != nil {
			return start, end, bad("end %.40q: RFC 3339, such as 2026-12-24T18:00:00Z", a.End)
		}
	case a.For != "":
		d, derr := time.ParseDuration(a.For)
		if derr != nil || d <= 0 || d > MaxReservationLength {
			return start, end, bad("for %.20q: a positive duration such as 8h, up to a year", a.For)
		}
		if a.Action == ResExtend {
			return start, end, nil // added to the current end
		}
		end = start.Add(d)
	}
	return start, end, nil
}

// Validate checks the arguments of reservations.
func (a ReservationsArgs) Validate() error {
	switch a.Action {
	case ResList:
		return nil
	case ResCreate:
		if err := ValidLabel(a.User); err != nil {
			return bad("reservation user: %v", err)
		}
		if a.Cluster != "" {
			if err := ValidCluster(a.Cluster); err != nil {
				return bad("reservation cluster: %v", err)
			}
		}
		if a.MemMB < 0 || a.MemMB > MaxMemMB || a.VCPUs < 0 || a.VCPUs > MaxVCPUs || a.MemMB+a.VCPUs == 0 {
			return bad("reservation: mem_mb 0 to %d and vcpus 0 to %d, not both 0", MaxMemMB, MaxVCPUs)
		}
		if err := validNames("lnms", a.LNMs, MaxReservationLNMs, ValidLabel); err != nil {
			return err
		}
		switch a.OnEnd {
		case "", OnEndShutdown, OnEndDestroy:
		default:
			return bad("on_end %.20q: shutdown or destroy", a.OnEnd)
		}
		start, end, err := a.Times(time.Now())
		if err != nil {
			return err
		}
		if a.End == "" && a.For == "" {
			return bad("a reservation needs an end (end or for)")
		}
		if !end.After(start) || end.Sub(start) > MaxReservationLength {
			return bad("reservation: the end must come after the start, within a year")
		}
		return nil
	case ResExtend:
		if err := ValidReservationID(a.ID); err != nil {
			return bad("%v", err)
		}
		if a.End == "" && a.For == "" {
			return bad("extend needs a new end (end) or how much longer (for)")
		}
		_, _, err := a.Times(time.Now())
		return err
	case ResCancel:
		if err := ValidReservationID(a.ID); err != nil {
			return bad("%v", err)
		}
		return nil
	}
	return bad("reservations: action %.20q: list, create, extend or cancel", a.Action)
}
