# Every C file matches .clang-format.
cd "${CF_SOURCE_DIR:?}" || exit 1
command -v clang-format >/dev/null || { echo "skip: clang-format not installed"; exit 77; }
files=$(find lib node proto tests benchmarks -name '*.[ch]' 2>/dev/null | sort)
[[ -n $files ]] || { echo "no C files found"; exit 1; }
status=0
for f in $files; do
    [[ -f $f ]] || continue
    if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
        echo "not formatted: $f (run clang-format -i $f)"
        status=1
    fi
done
exit $status
