package mappressure

import (
	"reflect"
	"testing"
)

func util(id uint32, u float64) MapSample {
	return MapSample{ID: id, Name: "m", Type: MapTypeHash, Utilization: u, UtilizationKnown: true}
}

func TestTrackerCrossings(t *testing.T) {
	type step struct {
		samples []MapSample
		want    []Crossing
	}
	cross := func(id uint32, from, to Level, u float64) Crossing {
		return Crossing{ID: id, Name: "m", Type: MapTypeHash, From: from, To: to, Utilization: u}
	}
	for _, tc := range []struct {
		name  string
		th    Thresholds
		steps []step
	}{
		{
			name: "quiet map never crosses",
			th:   DefaultThresholds(),
			steps: []step{
				{[]MapSample{util(1, 0)}, nil},
				{[]MapSample{util(1, 0.5)}, nil},
				{[]MapSample{util(1, 0.69)}, nil},
			},
		},
		{
			name: "rise through both levels, one crossing each, none while steady",
			th:   DefaultThresholds(),
			steps: []step{
				{[]MapSample{util(1, 0.5)}, nil},
				{[]MapSample{util(1, 0.7)}, []Crossing{cross(1, LevelOK, LevelWarning, 0.7)}},
				{[]MapSample{util(1, 0.75)}, nil},
				{[]MapSample{util(1, 0.8)}, []Crossing{cross(1, LevelWarning, LevelCritical, 0.8)}},
				{[]MapSample{util(1, 0.95)}, nil},
				{[]MapSample{util(1, 1)}, nil},
			},
		},
		{
			name: "first seen above critical crosses from ok",
			th:   DefaultThresholds(),
			steps: []step{
				{[]MapSample{util(7, 0.9)}, []Crossing{cross(7, LevelOK, LevelCritical, 0.9)}},
			},
		},
		{
			name: "hysteresis holds the level near the threshold",
			th:   DefaultThresholds(),
			steps: []step{
				{[]MapSample{util(1, 0.81)}, []Crossing{cross(1, LevelOK, LevelCritical, 0.81)}},
				{[]MapSample{util(1, 0.79)}, nil},
				{[]MapSample{util(1, 0.80)}, nil},
				{[]MapSample{util(1, 0.775)}, []Crossing{cross(1, LevelCritical, LevelWarning, 0.775)}},
				{[]MapSample{util(1, 0.69)}, nil},
				{[]MapSample{util(1, 0.6)}, []Crossing{cross(1, LevelWarning, LevelOK, 0.6)}},
			},
		},
		{
			name: "fall straight from critical to ok",
			th:   DefaultThresholds(),
			steps: []step{
				{[]MapSample{util(1, 0.9)}, []Crossing{cross(1, LevelOK, LevelCritical, 0.9)}},
				{[]MapSample{util(1, 0.1)}, []Crossing{cross(1, LevelCritical, LevelOK, 0.1)}},
			},
		},
		{
			name: "zero hysteresis drops as soon as below",
			th:   Thresholds{Warning: 0.5, Critical: 0.9},
			steps: []step{
				{[]MapSample{util(1, 0.5)}, []Crossing{cross(1, LevelOK, LevelWarning, 0.5)}},
				{[]MapSample{util(1, 0.4999)}, []Crossing{cross(1, LevelWarning, LevelOK, 0.4999)}},
			},
		},
		{
			name: "equal thresholds go straight to critical",
			th:   Thresholds{Warning: 0.8, Critical: 0.8},
			steps: []step{
				{[]MapSample{util(1, 0.8)}, []Crossing{cross(1, LevelOK, LevelCritical, 0.8)}},
			},
		},
		{
			name: "maps are independent and reported in sample order",
			th:   DefaultThresholds(),
			steps: []step{
				{[]MapSample{util(1, 0.75), util(2, 0.1), util(3, 0.85)}, []Crossing{
					cross(1, LevelOK, LevelWarning, 0.75), cross(3, LevelOK, LevelCritical, 0.85),
				}},
				{[]MapSample{util(1, 0.75), util(2, 0.72), util(3, 0.85)}, []Crossing{
					cross(2, LevelOK, LevelWarning, 0.72),
				}},
			},
		},
		{
			name: "a vanished map is forgotten and starts over",
			th:   DefaultThresholds(),
			steps: []step{
				{[]MapSample{util(1, 0.9)}, []Crossing{cross(1, LevelOK, LevelCritical, 0.9)}},
				{[]MapSample{}, nil},
				{[]MapSample{util(1, 0.9)}, []Crossing{cross(1, LevelOK, LevelCritical, 0.9)}},
			},
		},
		{
			name: "maps without a utilization are ignored",
			th:   DefaultThresholds(),
			steps: []step{
				{[]MapSample{{ID: 4, Type: MapTypeArray, MaxEntries: 10}}, nil},
				{[]MapSample{{ID: 4, Type: MapTypeArray, Utilization: 0.99}}, nil},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := NewTracker(tc.th)
			if err != nil {
				t.Fatal(err)
			}
			var buf []Crossing
			for i, st := range tc.steps {
				buf = tr.Update(st.samples, buf)
				if len(buf) == 0 && len(st.want) == 0 {
					continue
				}
				if !reflect.DeepEqual(buf, st.want) {
					t.Fatalf("step %d: got %+v, want %+v", i, buf, st.want)
				}
			}
		})
	}
}

func TestTrackerForgetsVanishedMaps(t *testing.T) {
	tr, err := NewTracker(DefaultThresholds())
	if err != nil {
		t.Fatal(err)
	}
	tr.Update([]MapSample{util(1, 0.9), util(2, 0.1), util(3, 0.75)}, nil)
	tr.Update([]MapSample{util(2, 0.1)}, nil)
	if len(tr.levels) != 1 {
		t.Fatalf("tracker keeps %d maps, want 1", len(tr.levels))
	}
	if _, ok := tr.levels[2]; !ok {
		t.Fatal("tracker lost the map that is still there")
	}
}

func TestThresholdsValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*Thresholds)
		ok     bool
	}{
		{"defaults", func(*Thresholds) {}, true},
		{"warning zero", func(th *Thresholds) { th.Warning = 0 }, false},
		{"warning negative", func(th *Thresholds) { th.Warning = -0.1 }, false},
		{"critical below warning", func(th *Thresholds) { th.Critical = 0.6 }, false},
		{"critical equal to warning", func(th *Thresholds) { th.Critical = th.Warning }, true},
		{"critical above 1 never fires but is valid", func(th *Thresholds) { th.Critical = 1.5 }, true},
		{"negative hysteresis", func(th *Thresholds) { th.Hysteresis = -0.01 }, false},
		{"hysteresis as large as warning", func(th *Thresholds) { th.Hysteresis = th.Warning }, false},
		{"NaN warning", func(th *Thresholds) { th.Warning = nan() }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := DefaultThresholds()
			tc.modify(&th)
			err := th.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
			if _, err := NewTracker(th); (err == nil) != tc.ok {
				t.Fatalf("NewTracker() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func nan() float64 {
	zero := 0.0
	return zero / zero
}
