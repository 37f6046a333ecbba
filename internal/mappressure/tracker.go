package mappressure

import (
	"errors"
	"fmt"
)

// Level is a map's pressure level.
type Level uint8

const (
	LevelOK Level = iota
	LevelWarning
	LevelCritical
)

func (l Level) String() string {
	switch l {
	case LevelOK:
		return "ok"
	case LevelWarning:
		return "warning"
	case LevelCritical:
		return "critical"
	}
	return fmt.Sprintf("level(%d)", uint8(l))
}

// Default thresholds on MapSample.Utilization.
const (
	DefaultWarning    = 0.7
	DefaultCritical   = 0.8
	DefaultHysteresis = 0.02
)

// Thresholds configure a Tracker.
type Thresholds struct {
	// Warning and Critical are utilization ratios: a map is at a level
	// once its utilization reaches the level's threshold.
	Warning  float64
	Critical float64
	// Hysteresis is how far below a threshold utilization must fall before
	// the level drops again, so that a map hovering at a threshold yields
	// one crossing rather than one per scrape.
	Hysteresis float64
}

// DefaultThresholds returns 0.7 / 0.8 with a 0.02 hysteresis.
func DefaultThresholds() Thresholds {
	return Thresholds{Warning: DefaultWarning, Critical: DefaultCritical, Hysteresis: DefaultHysteresis}
}

// Validate checks 0 < Warning <= Critical and 0 <= Hysteresis < Warning.
func (t Thresholds) Validate() error {
	if !(t.Warning > 0) {
		return errors.New("warning threshold must be above 0")
	}
	if !(t.Critical >= t.Warning) {
		return errors.New("critical threshold must be at least the warning threshold")
	}
	if !(t.Hysteresis >= 0 && t.Hysteresis < t.Warning) {
		return errors.New("hysteresis must be at least 0 and below the warning threshold")
	}
	return nil
}

// Crossing is a change of a map's pressure level.
type Crossing struct {
	ID          uint32
	Name        string
	Type        MapType
	From, To    Level
	Utilization float64
}

// Tracker turns a stream of samples into level crossings. It is not safe for
// concurrent use; the receiver feeds it from its scrape loop.
type Tracker struct {
	th     Thresholds
	levels map[uint32]trackedLevel
	pass   uint64
}

type trackedLevel struct {
	level Level
	seen  uint64
}

// NewTracker returns a tracker, or an error when th is invalid.
func NewTracker(th Thresholds) (*Tracker, error) {
	if err := th.Validate(); err != nil {
		return nil, err
	}
	return &Tracker{th: th, levels: make(map[uint32]trackedLevel)}, nil
}

// Update feeds one scrape's samples and appends to dst[:0] one Crossing for
// every map whose level changed since the previous Update. A map first seen
// above a threshold crosses from LevelOK. Maps without a known utilization
// are not tracked, and maps missing from samples are forgotten, so a map
// that comes back (or a new map that reuses its id) starts from LevelOK.
func (t *Tracker) Update(samples []MapSample, dst []Crossing) []Crossing {
	dst = dst[:0]
	t.pass++
	for i := range samples {
		s := &samples[i]
		if !s.UtilizationKnown {
			continue
		}
		prev, ok := t.levels[s.ID]
		if !ok {
			prev.level = LevelOK
		}
		next := t.level(prev.level, s.Utilization)
		t.levels[s.ID] = trackedLevel{level: next, seen: t.pass}
		if next != prev.level {
			dst = append(dst, Crossing{
				ID: s.ID, Name: s.Name, Type: s.Type,
				From: prev.level, To: next, Utilization: s.Utilization,
			})
		}
	}
	for id, l := range t.levels {
		if l.seen != t.pass {
			delete(t.levels, id)
		}
	}
	return dst
}

// level applies the thresholds: rising takes reaching the threshold,
// falling takes dropping below threshold - hysteresis.
func (t *Tracker) level(cur Level, u float64) Level {
	h := t.th.Hysteresis
	switch {
	case u >= t.th.Critical:
		return LevelCritical
	case cur == LevelCritical && u >= t.th.Critical-h:
		return LevelCritical
	case u >= t.th.Warning:
		return LevelWarning
	case cur >= LevelWarning && u >= t.th.Warning-h:
		return LevelWarning
	}
	return LevelOK
}
