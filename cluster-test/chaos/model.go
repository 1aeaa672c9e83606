package chaos

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// The registry model: what a sequence of register, deregister and
// consistent reads of one instance key may observe, given how herd's
// registrar behaves. It is nondeterministic where herd is:
//
//   - An operation that failed or timed out may or may not have taken
//     effect; a timed-out one may take effect much later (a paused node
//     answers the request when it resumes), so its return time is infinite.
//   - A Register whose outcome was unknown is "doubtful": if the key is not
//     registered by the node, the registrar deletes the value it may have
//     written once the registry answers.
//   - While the owning node is in a fault window (crashed, paused, cut off,
//     and a while after it heals) its lease may lapse: its instances vanish
//     and come back with the values the node holds (re-registration). A
//     wiped data dir forgets them. Outside such windows a lapse must have
//     been repaired: the model restores the node's values.
//
// Everything else is exact: a read returns the value of the last register
// before it, or nothing after a deregister.

// Op kinds.
const (
	OpRegister   = "register"
	OpDeregister = "deregister"
	OpGet        = "get"
)

// Outcomes.
const (
	Ok       = "ok"
	Unknown  = "unknown"  // failed or timed out: may or may not have happened
	NotFound = "notfound" // deregister of a key the node does not hold
	Refused  = "refused"  // definitely not done (409, 4xx)
)

// ModelInput is one operation on one key.
type ModelInput struct {
	Kind  string
	Key   string // service/id
	Value string // register: the unique value written
	// Window: the owner node was in a fault window at some time the
	// operation may have taken effect; Wiped: and its data dir was wiped.
	Window, Wiped bool
}

// ModelOutput is what it returned.
type ModelOutput struct {
	Status string
	Value  string // get: the value read, "" for absent
}

// world is one state the key may be in.
type world struct {
	Vis    string // the value in the registry, "" for absent
	Des    string // the value the owner node keeps registering, "" for none
	Doubt  string // a doubtful write the registrar will delete if still there
	Lapsed bool   // the owner's lease lapsed and re-registration is due
}

// closure adds every state reachable without an operation.
func closure(ws []world, in ModelInput) []world {
	seen := map[world]bool{}
	var out []world
	var add func(w world)
	add = func(w world) {
		if w.Des != "" {
			w.Doubt = "" // a held key is never cleaned up
		}
		if !in.Window && w.Lapsed {
			// Outside a window a lapse has been repaired.
			w = world{Vis: w.Des, Des: w.Des}
		}
		if seen[w] {
			return
		}
		seen[w] = true
		out = append(out, w)
		if w.Doubt != "" && w.Vis == w.Doubt {
			add(world{Des: w.Des, Lapsed: w.Lapsed}) // the cleanup ran
		}
		if in.Window {
			add(world{Des: w.Des, Lapsed: true}) // the lease lapsed
			if w.Lapsed {
				add(world{Vis: w.Des, Des: w.Des}) // re-registered
			}
			if in.Wiped {
				add(world{}) // the node came back without its data
			}
		}
	}
	for _, w := range ws {
		add(w)
	}
	return out
}

// step applies one operation to one state.
func step(w world, in ModelInput, out ModelOutput) []world {
	switch in.Kind {
	case OpRegister:
		done := world{Vis: in.Value, Des: in.Value}
		switch out.Status {
		case Ok:
			return []world{done}
		case Refused:
			return []world{w}
		default:
			partial := world{Vis: in.Value, Des: w.Des, Lapsed: w.Lapsed}
			if w.Des == "" {
				partial.Doubt = in.Value
			}
			return []world{w, partial, done}
		}
	case OpDeregister:
		gone := world{}
		switch out.Status {
		case Ok:
			return []world{gone}
		case NotFound:
			if w.Vis == "" && w.Des == "" {
				return []world{w}
			}
			return nil
		case Refused:
			return []world{w}
		default:
			return []world{w, {Des: w.Des, Lapsed: w.Lapsed}, gone}
		}
	case OpGet:
		if w.Vis == out.Value {
			return []world{w}
		}
		return nil
	}
	return nil
}

// registryModel is the porcupine model, partitioned by key.
var registryModel = porcupine.NondeterministicModel{
	Init: func() []interface{} { return []interface{}{world{}} },
	Step: func(state, input, output interface{}) []interface{} {
		in, out := input.(ModelInput), output.(ModelOutput)
		var next []interface{}
		for _, w := range closure([]world{state.(world)}, in) {
			for _, n := range step(w, in, out) {
				next = append(next, n)
			}
		}
		return next
	},
	Equal: func(a, b interface{}) bool { return a == b },
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(ModelInput), output.(ModelOutput)
		flags := ""
		if in.Window {
			flags = " [fault window]"
		}
		switch in.Kind {
		case OpRegister:
			return fmt.Sprintf("register(%s) -> %s%s", in.Value, out.Status, flags)
		case OpDeregister:
			return fmt.Sprintf("deregister -> %s%s", out.Status, flags)
		default:
			v := out.Value
			if v == "" {
				v = "absent"
			}
			return fmt.Sprintf("get -> %s%s", v, flags)
		}
	},
	DescribeState: func(state interface{}) string {
		w := state.(world)
		return fmt.Sprintf("vis=%q des=%q doubt=%q lapsed=%v", w.Vis, w.Des, w.Doubt, w.Lapsed)
	},
}

// Model returns the porcupine model of the registry, partitioned by key.
func Model() porcupine.Model {
	m := registryModel.ToModel()
	m.Partition = func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(ModelInput).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	}
	return m
}

// Window is a span of time during which a node's lease may lapse.
type Window struct {
	Node     string        `json:"node"`
	From, To time.Duration `json:"-"`
	Wiped    bool          `json:"wiped"`
	FromS    float64       `json:"from_s"`
	ToS      float64       `json:"to_s"`
}

// Infinity is the return time of an operation whose outcome is unknown.
const Infinity = time.Duration(math.MaxInt64)

// History turns recorded operations into porcupine's, marking each with the
// fault windows of its key's owner that it overlaps. A list becomes one get
// per key of its service.
func History(ops []Op, keys []Key, windows []Window) []porcupine.Operation {
	var out []porcupine.Operation
	add := func(op Op, in ModelInput, o ModelOutput) {
		ret := op.Return
		if o.Status == Unknown {
			ret = Infinity
		}
		for _, w := range windows {
			if w.Node == ownerOf(in.Key, keys) && op.Call <= w.To && ret >= w.From {
				in.Window = true
				in.Wiped = in.Wiped || w.Wiped
			}
		}
		out = append(out, porcupine.Operation{
			ClientId: op.Client, Input: in, Output: o,
			Call: int64(op.Call), Return: int64(ret), Metadata: op.Via,
		})
	}
	for _, op := range ops {
		switch op.Kind {
		case OpRegister, OpDeregister:
			add(op, ModelInput{Kind: op.Kind, Key: op.Key, Value: op.Value}, ModelOutput{Status: op.Status})
		case OpGet:
			if op.Status != Ok {
				continue // a failed read changes nothing
			}
			add(op, ModelInput{Kind: OpGet, Key: op.Key}, ModelOutput{Status: Ok, Value: op.Got[op.Key]})
		case OpList:
			if op.Status != Ok {
				continue
			}
			for _, k := range keys {
				if k.Service == op.Key {
					add(op, ModelInput{Kind: OpGet, Key: k.String()}, ModelOutput{Status: Ok, Value: op.Got[k.String()]})
				}
			}
		}
	}
	return out
}

func ownerOf(key string, keys []Key) string {
	for _, k := range keys {
		if k.String() == key {
			return k.Owner
		}
	}
	return ""
}
