# The W2 scaling curve: speedup over serial Lua against the number of
# workers. Called by bench/plot.py with datafile, outfile, cpus, source,
# note and has_python set on the command line.
set terminal pngcairo size 800,520 font "sans,11"
set output outfile
set title sprintf("loom W2 scaling: 8 calls of a 0.25 s pure-Lua loop, %d CPUs (%s)", cpus, source)
set xlabel "workers"
set ylabel "speedup over serial"
set xrange [0:8.5]
set xtics ("1" 1, "2" 2, "4" 4, "8" 8)
# room above the core count, so the linear ideal runs off the top instead
# of flattening everything measured against the bottom
set yrange [0:(cpus < 8 ? cpus : 8) + 1.5]
set grid
set key bottom right box opaque
if (strlen(note) > 0) {
  set style textbox opaque noborder
  set label 1 note at graph 0.03, graph 0.95 textcolor rgb "#c00000" front boxed
}
# ideal: linear in the workers; but no machine beats its core count
ideal(x) = x
on_cores(x) = x < cpus ? x : cpus
curves = 'ideal(x) with lines dashtype 2 linecolor rgb "gray40" title "ideal (linear)", \
  on_cores(x) with lines dashtype 3 linewidth 2 linecolor rgb "gray20" \
    title sprintf("ideal on %d CPUs", cpus), \
  datafile using 1:2 with linespoints pointtype 7 pointsize 1.5 linewidth 2 \
    linecolor rgb "#1f77b4" title "loom (measured)"'
# a fresh W2-only run has no Python column
if (has_python) {
  plot @curves, datafile using 1:3 with linespoints pointtype 5 linewidth 1.5 \
    linecolor rgb "#ff7f0e" title "Python ProcessPool (measured)"
} else {
  plot @curves
}
