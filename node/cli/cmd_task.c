/* clipfarm task: internal. A node's executor starts this for each render
 * stage it runs, in a process of its own (node/work/cf_task.h); it is not
 * listed in `clipfarm --help`. */
#include "cf_cli.h"
#include "cf_task.h"

int cf_cmd_task(int argc, char **argv)
{
    return cf_task_child_main(argc, argv);
}
