package ledger

import (
	"math"
	"sort"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Figures are a line's numbers over a window: how many boards, how fast,
// how many passed first time, and how long each phase took.
type Figures struct {
	Recipe        string                    `json:"recipe"` // "" = every recipe (the bench)
	Window        string                    `json:"window"` // "hour" or "shift"
	Since         time.Time                 `json:"since"`
	Boards        int                       `json:"boards"`           // distinct boards with a row
	Done          int                       `json:"done"`             // boards whose last row is done
	BoardsPerHour float64                   `json:"boards_per_hour"`  // done boards / window hours
	FirstPass     float64                   `json:"first_pass_yield"` // boards whose first row is done / boards
	Phases        map[string]PhaseQuantiles `json:"phases"`           // of done rows
}

// PhaseQuantiles are the median and 95th percentile of a phase, seconds.
type PhaseQuantiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
}

// Summary accumulates rows (oldest first) into figures per recipe and for
// the whole bench.
type Summary struct {
	window string
	since  time.Time
	hours  float64
	groups map[string]*group
}

type group struct {
	first  map[string]string // board -> result of its first row
	done   int
	phases map[string][]float64
}

// NewSummary starts a summary of the rows since since, over hours.
func NewSummary(window string, since time.Time, hours float64) *Summary {
	return &Summary{window: window, since: since, hours: hours, groups: map[string]*group{}}
}

// Add counts one row, for its recipe and for the bench.
func (s *Summary) Add(r contract.LedgerRow) {
	board := r.Serial
	if board == "" {
		board = r.MAC
	}
	for _, key := range []string{"", r.Recipe} {
		g := s.groups[key]
		if g == nil {
			g = &group{first: map[string]string{}, phases: map[string][]float64{}}
			s.groups[key] = g
		}
		if _, ok := g.first[board]; !ok {
			g.first[board] = r.Result
		}
		if r.Result == contract.StateDone {
			g.done++
			for name, v := range map[string]float64{"netboot": r.Seconds.Netboot, "register": r.Seconds.Register, "write": r.Seconds.Write,
				"verify": r.Seconds.Verify, "customise": r.Seconds.Customise, "total": r.Seconds.Total} {
				if v > 0 {
					g.phases[name] = append(g.phases[name], v)
				}
			}
		}
		if r.Recipe == "" {
			break // the bench group is the recipe group
		}
	}
}

// Figures returns the bench's figures first, then each recipe's by name.
func (s *Summary) Figures() []Figures {
	keys := make([]string, 0, len(s.groups))
	for k := range s.groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		keys = []string{""}
	}
	var out []Figures
	for _, k := range keys {
		g := s.groups[k]
		f := Figures{Recipe: k, Window: s.window, Since: s.since.UTC(), Phases: map[string]PhaseQuantiles{}}
		if g != nil {
			f.Boards = len(g.first)
			pass := 0
			for _, res := range g.first {
				if res == contract.StateDone {
					pass++
				}
			}
			f.Done = g.done
			if f.Boards > 0 {
				f.FirstPass = float64(pass) / float64(f.Boards)
			}
			for name, vs := range g.phases {
				f.Phases[name] = PhaseQuantiles{P50: quantile(vs, 0.5), P95: quantile(vs, 0.95)}
			}
		}
		if s.hours > 0 {
			f.BoardsPerHour = float64(f.Done) / s.hours
		}
		out = append(out, f)
	}
	return out
}

// quantile is the nearest-rank quantile of vs (sorted in place).
func quantile(vs []float64, q float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	sort.Float64s(vs)
	i := int(math.Ceil(q*float64(len(vs)))) - 1
	return vs[max(0, min(i, len(vs)-1))]
}
