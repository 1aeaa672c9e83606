package chaos

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Timeline records what the run did when, relative to its start, so that a
// failure reads like a Jepsen report: faults injected and healed, checks,
// and what the harness waited for.
type Timeline struct {
	start time.Time
	mu    sync.Mutex
	ev    []Event
	echo  io.Writer
}

// Event is one line of the timeline.
type Event struct {
	At   time.Duration `json:"at_ns"`
	What string        `json:"what"`
}

// NewTimeline starts a timeline now; every event is also written to echo
// when it is not nil.
func NewTimeline(echo io.Writer) *Timeline { return &Timeline{start: time.Now(), echo: echo} }

// Now is the time since the start, the clock of every recorded operation.
func (t *Timeline) Now() time.Duration { return time.Since(t.start) }

// Start is when the timeline began.
func (t *Timeline) Start() time.Time { return t.start }

// Add records an event now.
func (t *Timeline) Add(format string, args ...any) {
	e := Event{At: t.Now(), What: fmt.Sprintf(format, args...)}
	t.mu.Lock()
	t.ev = append(t.ev, e)
	t.mu.Unlock()
	if t.echo != nil {
		fmt.Fprintf(t.echo, "%8.3fs  %s\n", e.At.Seconds(), e.What)
	}
}

// Events returns a copy of the events so far.
func (t *Timeline) Events() []Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Event(nil), t.ev...)
}
