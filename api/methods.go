package api

import "context"

// Access says who may call a method. The serving end checks it in one
// place, before a handler runs.
type Access uint8

// Access levels.
const (
	// Public methods may be called before a client has authenticated
	// (only auth).
	Public Access = iota + 1
	// Authenticated methods need a logged-in user; the policy chain
	// authorizes each request further.
	Authenticated
	// AdminOnly methods need a user the authentication chain made admin.
	AdminOnly
	// FromNode methods are called by an LNM holding a node certificate.
	FromNode
	// FromController methods are called by the controller on an LNM
	// (Table 2); an LNM serves them only on the session it dialled to
	// its controller.
	FromController
)

func (a Access) String() string {
	switch a {
	case Public:
		return "public"
	case Authenticated:
		return "authenticated users"
	case AdminOnly:
		return "admins"
	case FromNode:
		return "nodes"
	case FromController:
		return "the controller"
	}
	return "nobody"
}

// Method declares one call: its wire name, argument and reply types, and
// who may call it. Both ends use the same declaration.
type Method[A, R any] struct {
	Name   string
	Access Access
}

// Stream declares a long-lived stream: the opener sends A, then messages
// of type M flow (from the server for the client's event feed, from the
// LNM for its reports).
type Stream[A, M any] struct {
	Name   string
	Access Access
}

// The client link (the paper's Table 4 and session plumbing), served by
// the controller.
var (
	MAuth     = Method[AuthArgs, AuthReply]{"auth", Public}
	MWhoami   = Method[Empty, Identity]{"whoami", Authenticated}
	MList     = Method[ListArgs, *ListReply]{"list", Authenticated}
	MListLNMs = Method[ListLNMsArgs, *ListLNMsReply]{"list_lnms", Authenticated}
	MClusters = Method[ClustersArgs, ClustersReply]{"clusters", Authenticated}
	MStart    = Method[StartArgs, *Result]{"start", Authenticated}
	MOpOn     = Method[OpArgs, *Result]{"op_on", Authenticated}
	MMigrate  = Method[MigrateArgs, *Result]{"migrate", Authenticated}
	MForget   = Method[ForgetArgs, *Result]{"forget", Authenticated}
	MPlan     = Method[PlanArgs, *Result]{"plan", Authenticated}
	MPolicy   = Method[PolicyArgs, PolicyReply]{"policy", AdminOnly}
	MStatus   = Method[StatusArgs, Status]{"status", AdminOnly}
	// MReservations lists, creates (admins), extends and cancels
	// reservations.
	MReservations = Method[ReservationsArgs, ReservationsReply]{"reservations", Authenticated}
	// MSetLNMMode isolates, drains or restores a node (admins).
	MSetLNMMode = Method[SetLNMModeArgs, *LNM]{"set_lnm_mode", AdminOnly}
	// MImages lists the site's image store; MKeys manages the caller's
	// SSH public keys (installed in the VMs it starts).
	MImages = Method[Empty, ImagesReply]{"images", Authenticated}
	MKeys   = Method[KeysArgs, KeysReply]{"keys", Authenticated}
	// MTokens manages the caller's API tokens (the HTTP API's Bearer
	// authentication).
	MTokens = Method[TokensArgs, TokensReply]{"tokens", Authenticated}
	// MEvents is the client's event feed: "ready", then events.
	MEvents = Stream[EventsArgs, Event]{"events", Authenticated}
	// MConsole attaches to a VM's serial console (owner and admins):
	// ConsoleData frames flow both ways (see ConsoleArgs).
	MConsole = Stream[ConsoleArgs, ConsoleData]{"console", Authenticated}
)

// The LNM link, LNM → controller.
var (
	// MHello registers an LNM: the first call of its session.
	MHello = Method[Hello, HelloReply]{"lnm_hello", FromNode}
	// MReports is the LNM's report stream.
	MReports = Stream[Empty, Report]{"lnm_events", FromNode}
)

// The LNM link, controller → LNM (Table 2). Each step of the protocol is
// its own method: nothing a client sends selects one.
var (
	LGetNodeInfo      = Method[Empty, NodeInfo]{"get_node_info", FromController}
	LGetNodeStatus    = Method[Empty, NodeStatus]{"get_node_status", FromController}
	LListGuests       = Method[Empty, GuestsReply]{"list_guests", FromController}
	LGetDetails       = Method[NamesArgs, GuestsReply]{"get_details", FromController}
	LGetStatus        = Method[NamesArgs, GuestsReply]{"get_status", FromController}
	LReceive          = Method[ReceiveArgs, Empty]{"receive", FromController}
	LSync             = Method[ReceiveArgs, Empty]{"sync", FromController}
	LForget           = Method[NamesArgs, Empty]{"forget", FromController}
	LStart            = Method[LNMStartArgs, LNMResults]{"start", FromController}
	LOpOn             = Method[LNMOpArgs, LNMResults]{"op_on", FromController}
	LPrepareMigration = Method[LNMStartArgs, LNMResults]{"prepare_migration", FromController}
	LAbortMigration   = Method[NamesArgs, LNMResults]{"abort_migration", FromController}
	LMigrate          = Method[LNMMigrateArgs, LNMResults]{"migrate", FromController}
	// LConsole is MConsole's last hop: the controller relays a client's
	// console stream to the VM's LNM.
	LConsole = Stream[ConsoleArgs, ConsoleData]{"console", FromController}
)

// Node is Table 2: what an LNM serves to its controller, batched per
// node. The controller calls it through a link (package transport); the
// LNM implements it (package nodemgr); tests may fake either end.
type Node interface {
	// NodeInfo is get_node_info: the node's physical description.
	NodeInfo(ctx context.Context) (NodeInfo, error)
	// NodeStatus is get_node_status: a fresh sample of the node's use.
	NodeStatus(ctx context.Context) (NodeStatus, error)
	// ListGuests is every guest on the node with the cached object of each.
	ListGuests(ctx context.Context) (GuestsReply, error)
	// Details is get_details: the named guests with their cached objects.
	Details(ctx context.Context, a NamesArgs) (GuestsReply, error)
	// Status is get_status: the named guests' usage averages.
	Status(ctx context.Context, a NamesArgs) (GuestsReply, error)
	// Receive updates cached objects (the controller's acknowledgement).
	Receive(ctx context.Context, a ReceiveArgs) error
	// Sync makes the given objects the whole cache (registration).
	Sync(ctx context.Context, a ReceiveArgs) error
	// Forget drops cached objects.
	Forget(ctx context.Context, a NamesArgs) error
	// Start boots VMs from their objects.
	Start(ctx context.Context, a LNMStartArgs) (LNMResults, error)
	// OpOn applies a Table 3 operation.
	OpOn(ctx context.Context, a LNMOpArgs) (LNMResults, error)
	// PrepareMigration readies this node as the target of migrations.
	PrepareMigration(ctx context.Context, a LNMStartArgs) (LNMResults, error)
	// AbortMigration abandons prepared incoming migrations.
	AbortMigration(ctx context.Context, a NamesArgs) (LNMResults, error)
	// Migrate live-migrates guests from this node to another.
	Migrate(ctx context.Context, a LNMMigrateArgs) (LNMResults, error)
}
